package server

import (
	"net/http"

	"github.com/chime-ha/chime/chime/structs"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metrics are the server's Prometheus metrics, served at /metrics.
type metrics struct {
	reg        *prometheus.Registry
	requests   *prometheus.HistogramVec // API latency by route
	applied    *prometheus.CounterVec   // commands applied through this server, by type
	heartbeats prometheus.Counter       // heartbeats handled
	forwarded  prometheus.Counter       // requests forwarded to the leader
	alarmsSent *prometheus.CounterVec   // webhook deliveries by result
	// raftRefused counts incoming Raft connections refused by the TLS
	// stream layer, by reason (raftstream.go).
	raftRefused *prometheus.CounterVec
}

func newMetrics() *metrics {
	m := &metrics{reg: prometheus.NewRegistry()}
	m.requests = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "chime_api_request_seconds",
		Help: "API request latency by route.", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16)}, []string{"route"})
	m.applied = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "chime_raft_commands_total",
		Help: "Commands applied through Raft by this server, by type."}, []string{"type"})
	m.heartbeats = prometheus.NewCounter(prometheus.CounterOpts{Name: "chime_heartbeats_total", Help: "Agent heartbeats handled."})
	m.forwarded = prometheus.NewCounter(prometheus.CounterOpts{Name: "chime_forwarded_requests_total", Help: "Requests forwarded to the leader."})
	m.alarmsSent = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "chime_alarm_deliveries_total",
		Help: "Alarm delivery attempts (webhooks and Alertmanagers) by result."}, []string{"result"})
	m.raftRefused = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "chime_raft_refused_connections_total",
		Help: "Incoming Raft connections refused before any Raft RPC was read, by reason (handshake: no server certificate of the cluster; busy: too many handshakes under way)."}, []string{"reason"})
	m.raftRefused.WithLabelValues(refusedHandshake)
	m.raftRefused.WithLabelValues(refusedBusy)
	m.reg.MustRegister(m.requests, m.applied, m.heartbeats, m.forwarded, m.alarmsSent, m.raftRefused,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// stateCollector reports gauges computed from the state at scrape time.
type stateCollector struct{ s *Server }

var (
	descLeader  = prometheus.NewDesc("chime_raft_leader", "1 if this server is the Raft leader.", nil, nil)
	descIndex   = prometheus.NewDesc("chime_raft_applied_index", "Last applied Raft index.", nil, nil)
	descNodes   = prometheus.NewDesc("chime_nodes", "Nodes by management and monitor state.", []string{"management_state", "monitor_state"}, nil)
	descVMs     = prometheus.NewDesc("chime_vms", "VMs by state.", []string{"state"}, nil)
	descMembers = prometheus.NewDesc("chime_gossip_members", "Memberlist members by state.", []string{"state"}, nil)
)

func (c stateCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descLeader
	ch <- descIndex
	ch <- descNodes
	ch <- descVMs
	ch <- descMembers
}

func (c stateCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.s
	leader := 0.0
	if s.raft.State() == raft.Leader {
		leader = 1
	}
	ch <- prometheus.MustNewConstMetric(descLeader, prometheus.GaugeValue, leader)
	ch <- prometheus.MustNewConstMetric(descIndex, prometheus.GaugeValue, float64(s.fsm.Index()))
	// Both from the FSM's derived view: a scrape decodes nothing.
	{
		counts := map[[2]string]int{}
		for _, n := range s.fsm.NodesView() {
			counts[[2]string{n.ManagementState, n.MonitorState}]++
		}
		for k, v := range counts {
			ch <- prometheus.MustNewConstMetric(descNodes, prometheus.GaugeValue, float64(v), k[0], k[1])
		}
	}
	{
		counts := map[string]int{structs.StateRunning: 0, structs.StatePending: 0}
		for k, v := range s.fsm.VMStates() {
			counts[k] += v
		}
		for k, v := range counts {
			ch <- prometheus.MustNewConstMetric(descVMs, prometheus.GaugeValue, float64(v), k)
		}
	}
	counts := map[string]int{}
	for _, m := range s.pool.Members() {
		counts[m.State]++
	}
	for k, v := range counts {
		ch <- prometheus.MustNewConstMetric(descMembers, prometheus.GaugeValue, float64(v), k)
	}
}

func (m *metrics) handler(s *Server) http.Handler {
	m.reg.MustRegister(stateCollector{s})
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}
