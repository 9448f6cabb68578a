package server

import (
	"net/http"
	"slices"

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
	// forwardWait counts forwarded writes by how the read-your-writes
	// wait ended (readyourwrites.go).
	forwardWait *prometheus.CounterVec
	alarmsSent  *prometheus.CounterVec // webhook deliveries by result
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
	m.forwardWait = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "chime_forward_apply_wait_total",
		Help: "Writes forwarded to the leader, by how this server's wait for its own state machine to apply the write's index ended (caught_up: already applied; waited; timeout: answered before it was applied)."}, []string{"result"})
	for _, r := range []string{waitCaughtUp, waitWaited, waitTimeout} {
		m.forwardWait.WithLabelValues(r)
	}
	m.alarmsSent = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "chime_alarm_deliveries_total",
		Help: "Alarm delivery attempts (webhooks and Alertmanagers) by result."}, []string{"result"})
	m.raftRefused = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "chime_raft_refused_connections_total",
		Help: "Incoming Raft connections refused before any Raft RPC was read, by reason (handshake: no server certificate of the cluster; busy: too many handshakes under way)."}, []string{"reason"})
	m.raftRefused.WithLabelValues(refusedHandshake)
	m.raftRefused.WithLabelValues(refusedBusy)
	m.reg.MustRegister(m.requests, m.applied, m.heartbeats, m.forwarded, m.forwardWait, m.alarmsSent, m.raftRefused,
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
	// descNodeMonitor is the enum pattern: one series per node and
	// monitor state, 1 for the node's state and 0 for the others, so that
	// a change of state never makes a series vanish (alerting rules in
	// dist/prometheus select the 1s).
	descNodeMonitor = prometheus.NewDesc("chime_node_monitor_state", "1 for each node's monitor state (normal, unreachable, error), 0 for the other states.",
		[]string{"node", "node_id", "state"}, nil)
	descTasks = prometheus.NewDesc("chime_tasks", "Tasks by kind and state (every kind and state, zeros included).", []string{"kind", "state"}, nil)
)

// monitorStates are the values chime_node_monitor_state reports for
// every node; taskKinds and taskStates those chime_tasks always reports.
var (
	monitorStates = []string{structs.MonitorNormal, structs.MonitorUnreachable, structs.MonitorError}
	taskKinds     = []string{structs.TaskMigrate, structs.TaskEvacuate, structs.TaskDrain, structs.TaskRebuild, structs.TaskAdopt}
	taskStates    = []string{structs.TaskPending, structs.TaskRunning, structs.TaskSucceeded, structs.TaskFailed, structs.TaskCancelled}
)

func (c stateCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descLeader
	ch <- descIndex
	ch <- descNodes
	ch <- descVMs
	ch <- descMembers
	ch <- descNodeMonitor
	ch <- descTasks
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
		nodes := s.fsm.NodesView()
		counts := map[[2]string]int{}
		for _, n := range nodes {
			counts[[2]string{n.ManagementState, n.MonitorState}]++
		}
		for k, v := range counts {
			ch <- prometheus.MustNewConstMetric(descNodes, prometheus.GaugeValue, float64(v), k[0], k[1])
		}
		for _, n := range nodes {
			states := monitorStates
			if !slices.Contains(states, n.MonitorState) {
				states = append(slices.Clone(states), n.MonitorState) // a state of a newer version: still shown
			}
			for _, st := range states {
				v := 0.0
				if st == n.MonitorState {
					v = 1
				}
				ch <- prometheus.MustNewConstMetric(descNodeMonitor, prometheus.GaugeValue, v, n.Name, n.ID, st)
			}
		}
	}
	if tasks, err := s.fsm.Tasks(); err == nil {
		counts := map[[2]string]int{}
		for _, k := range taskKinds {
			for _, st := range taskStates {
				counts[[2]string{k, st}] = 0
			}
		}
		for _, t := range tasks {
			counts[[2]string{t.Kind, t.State}]++
		}
		for k, v := range counts {
			ch <- prometheus.MustNewConstMetric(descTasks, prometheus.GaugeValue, float64(v), k[0], k[1])
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
