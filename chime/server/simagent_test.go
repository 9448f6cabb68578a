package server

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/chime-ha/chime/chime/structs"

	"github.com/google/uuid"

	"github.com/chime-ha/chime/chime/api"
)

// benchFleet is N simulated agents for the heartbeat benchmark: registered
// nodes that heartbeat on a schedule through a bounded pool of workers over
// keep-alive connections, and one HTTP server answering the servers'
// ping-back for every live agent on a listener per agent on 127.0.0.1
// (each node's api_addr is its own listener's host:port, since the
// ping-back dials only host:port and the fixed path /v1/ping; the local
// port tells the server who is asked). A simulated agent is not a gossip member: gossip always says
// "not alive", so the direct ping-back alone decides.
type benchFleet struct {
	base     string        // server API URL
	interval time.Duration // heartbeat interval
	http     *http.Client  // shared by every agent: one transport, many idle connections
	agents   []*benchAgent
	byID     map[string]*benchAgent // read-only once registered

	pingSrv   *http.Server
	byPort    map[int]*benchAgent // ping listener port → agent, read-only once registered
	livePings atomic.Int64        // ping-backs for live agents: the server suspected a node that heartbeats
	deadPings atomic.Int64        // ping-backs refused for silenced agents

	recording atomic.Bool  // workers record latencies while set
	ok        atomic.Int64 // successful heartbeats since start
	failed    atomic.Int64 // failed heartbeats since start (not counting those cut by the end)
	lastErr   atomic.Value // string: the last heartbeat error
	wg        sync.WaitGroup
	workers   []*benchWorker
}

// benchAgent is one simulated node.
type benchAgent struct {
	id, name string
	pingAddr string        // its ping listener's host:port (its api_addr)
	client   *api.Client   // carries the node's credentials
	phase    time.Duration // offset of its beats within an interval
	silenced atomic.Bool   // stop heartbeating and fail the ping-back
	busy     atomic.Bool   // a heartbeat is being sent
	lastSent atomic.Int64  // unix nanos at which its last successful heartbeat was sent
	// vms, when set, is what its heartbeats list (every domain running):
	// the VMs placed on it (BenchmarkScale); nil lists none.
	vms atomic.Pointer[[]structs.VMObservation]
}

// benchWorker sends the heartbeats of a fixed subset of agents, one at a time.
type benchWorker struct {
	agents    []*benchAgent   // sorted by phase
	latencies []time.Duration // successful heartbeats while recording
}

// newBenchFleet starts the shared ping listener. Stop it with close.
func newBenchFleet(base string, interval time.Duration, workers int) (*benchFleet, error) {
	f := &benchFleet{base: base, interval: interval, byID: map[string]*benchAgent{}, byPort: map[int]*benchAgent{},
		http: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
			MaxIdleConns: 2 * workers, MaxIdleConnsPerHost: 2 * workers, IdleConnTimeout: time.Minute,
		}}}
	f.lastErr.Store("")
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/ping", func(w http.ResponseWriter, r *http.Request) {
		var a *benchAgent
		ok := false
		if la, isTCP := r.Context().Value(http.LocalAddrContextKey).(*net.TCPAddr); isTCP {
			a, ok = f.byPort[la.Port]
		}
		if !ok || a.silenced.Load() {
			f.deadPings.Add(1)
			http.Error(w, "silenced", http.StatusServiceUnavailable)
			return
		}
		f.livePings.Add(1)
		w.Header().Set("Content-Type", "application/json")
		_, _ = fmt.Fprintf(w, `{"node_id":%q}`+"\n", a.id)
	})
	f.pingSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	return f, nil
}

func (f *benchFleet) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = f.pingSrv.Shutdown(ctx)
	f.http.CloseIdleConnections()
}

// register registers n agents, par at a time, and returns how long it took.
func (f *benchFleet) register(ctx context.Context, n, par int) (time.Duration, error) {
	start := time.Now()
	// Registration goes through Raft and may queue behind the others: a
	// long timeout and no retry, since a retry of a registration that did
	// apply is refused (the node exists, and the retry has no secret yet).
	regHTTP := &http.Client{Timeout: 2 * time.Minute, Transport: &http.Transport{MaxIdleConnsPerHost: par}}
	defer regHTTP.CloseIdleConnections()
	f.agents = make([]*benchAgent, n)
	for i := range f.agents {
		id := uuid.NewString()
		c := api.NewClient(f.base)
		c.HTTP, c.Retries = regHTTP, 0
		f.agents[i] = &benchAgent{id: id, name: fmt.Sprintf("sim-%d", i), client: c,
			phase: time.Duration(rand.Int64N(int64(f.interval)))}
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, fmt.Errorf("sim ping listener: %w", err)
		}
		f.agents[i].pingAddr = lis.Addr().String()
		f.byPort[lis.Addr().(*net.TCPAddr).Port] = f.agents[i]
		go func() { _ = f.pingSrv.Serve(lis) }()
	}
	jobs := make(chan *benchAgent)
	errs := make(chan error, par)
	var wg sync.WaitGroup
	for range par {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for a := range jobs {
				resp, err := a.client.Register(ctx, api.RegisterRequest{ID: a.id, Name: a.name,
					APIAddr: a.pingAddr, GossipAddr: "127.0.0.1:1",
					VCPUs: 16, MemoryMiB: 65536, AgentVersion: "sim"})
				if err != nil {
					errs <- fmt.Errorf("register %s: %w", a.name, err)
					return
				}
				// Heartbeats: the shared keep-alive client, no retry (a
				// failure is counted, and the next beat is the retry).
				a.client.HTTP, a.client.Retries = f.http, 0
				a.client.Node, a.client.Secret = a.id, resp.Secret
			}
		}()
	}
	var err error
feed:
	for _, a := range f.agents {
		select {
		case jobs <- a:
		case err = <-errs:
			break feed
		}
	}
	close(jobs)
	wg.Wait()
	if err == nil {
		select {
		case err = <-errs:
		default:
		}
	}
	if err != nil {
		return 0, err
	}
	for _, a := range f.agents {
		f.byID[a.id] = a
	}
	return time.Since(start), nil
}

// start makes every agent heartbeat at its phase of each interval, with
// ±10 % jitter, until ctx ends. Agents are dealt to nworkers workers; a
// worker that falls behind sends late rather than skipping, as a slow agent
// would.
func (f *benchFleet) start(ctx context.Context, nworkers int) {
	nworkers = max(1, min(nworkers, len(f.agents)))
	f.workers = make([]*benchWorker, nworkers)
	for i := range f.workers {
		f.workers[i] = &benchWorker{}
	}
	for i, a := range f.agents {
		w := f.workers[i%nworkers]
		w.agents = append(w.agents, a)
	}
	epoch := time.Now()
	for i, w := range f.workers {
		sort.Slice(w.agents, func(x, y int) bool { return w.agents[x].phase < w.agents[y].phase })
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			f.work(ctx, w, epoch, rand.New(rand.NewPCG(uint64(i), uint64(epoch.UnixNano()))))
		}()
	}
}

// wait waits for the workers after their ctx ended.
func (f *benchFleet) wait() { f.wg.Wait() }

func (f *benchFleet) work(ctx context.Context, w *benchWorker, epoch time.Time, rng *rand.Rand) {
	// ctx carries a deadline; the cycle cap is a second bound in case it does not.
	dl, ok := ctx.Deadline()
	if !ok {
		dl = epoch.Add(10 * time.Minute)
	}
	cycles := int(dl.Sub(epoch)/f.interval) + 2
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for cycle := 0; cycle < cycles; cycle++ {
		for _, a := range w.agents {
			jitter := time.Duration((rng.Float64()*0.2 - 0.1) * float64(f.interval))
			due := epoch.Add(time.Duration(cycle)*f.interval + a.phase + jitter)
			if d := time.Until(due); d > 0 {
				timer.Reset(d)
				select {
				case <-ctx.Done():
					return
				case <-timer.C:
				}
			} else if ctx.Err() != nil {
				return
			}
			f.beat(ctx, w, a)
		}
	}
}

// beat sends one heartbeat for a unless it is silenced. busy is set before
// silenced is read, so that once silence has seen busy false, no
// heartbeat of a is sent any more.
func (f *benchFleet) beat(ctx context.Context, w *benchWorker, a *benchAgent) {
	a.busy.Store(true)
	defer a.busy.Store(false)
	if a.silenced.Load() {
		return
	}
	obs := []structs.VMObservation{}
	if p := a.vms.Load(); p != nil {
		obs = *p
	}
	sent := time.Now()
	_, err := a.client.Heartbeat(ctx, api.HeartbeatRequest{NodeID: a.id, VMs: obs})
	lat := time.Since(sent)
	switch {
	case err == nil:
		f.ok.Add(1)
		a.lastSent.Store(sent.UnixNano())
		if f.recording.Load() {
			w.latencies = append(w.latencies, lat)
		}
	case ctx.Err() == nil:
		f.failed.Add(1)
		f.lastErr.Store(err.Error())
	}
}

// silence stops a's heartbeats and makes its ping-back fail. It returns
// when no heartbeat of a is in flight any more, with the send time of its
// last successful heartbeat.
func (f *benchFleet) silence(ctx context.Context, a *benchAgent) (time.Time, error) {
	a.silenced.Store(true)
	t := time.NewTicker(time.Millisecond)
	defer t.Stop()
	for a.busy.Load() {
		select {
		case <-ctx.Done():
			return time.Time{}, fmt.Errorf("silence %s: heartbeat still in flight: %w", a.name, ctx.Err())
		case <-t.C:
		}
	}
	last := a.lastSent.Load()
	if last == 0 {
		return time.Time{}, errors.New("silence " + a.name + ": it never heartbeat successfully")
	}
	return time.Unix(0, last), nil
}

// latencies returns every recorded latency, sorted. Call after wait.
func (f *benchFleet) latencies() []time.Duration {
	var out []time.Duration
	for _, w := range f.workers {
		out = append(out, w.latencies...)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// percentile of sorted durations (p in 0..1); 0 if empty.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(p * float64(len(sorted)-1))
	return sorted[i]
}
