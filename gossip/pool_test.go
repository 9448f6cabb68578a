package gossip

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chime-ha/chime/integration/wait"
	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/memberlist"
)

// testLogger is silent unless CHIME_TEST_LOG names a level (e.g. debug).
func testLogger(t *testing.T) hclog.Logger {
	t.Helper()
	level := hclog.LevelFromString(os.Getenv("CHIME_TEST_LOG"))
	if level == hclog.NoLevel {
		return hclog.NewNullLogger()
	}
	return hclog.New(&hclog.LoggerOptions{Name: t.Name(), Level: level, Output: os.Stderr})
}

// startPool starts a fast-profile pool on 127.0.0.1 with a kernel-picked port
// and shuts it down when the test ends.
func startPool(t *testing.T, name string, meta map[string]string, edit func(*Config)) *Pool {
	t.Helper()
	cfg := Config{
		Name:     name,
		BindAddr: "127.0.0.1",
		Meta:     meta,
		Profile:  ProfileFast,
		Logger:   testLogger(t).Named(name),
	}
	if edit != nil {
		edit(&cfg)
	}
	p, err := Start(context.Background(), cfg)
	if err != nil {
		t.Fatalf("start pool %s: %v", name, err)
	}
	t.Cleanup(func() {
		if err := p.Shutdown(); err != nil {
			t.Errorf("shutdown %s: %v", name, err)
		}
	})
	return p
}

func joinTo(t *testing.T, p *Pool, to *Pool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	n, err := p.Join(ctx, []string{to.LocalAddr()})
	if err != nil || n != 1 {
		t.Fatalf("%s join %s: n=%d err=%v", p.Name(), to.LocalAddr(), n, err)
	}
}

func describe(ms []Member) string {
	parts := make([]string, 0, len(ms))
	for _, m := range ms {
		parts = append(parts, fmt.Sprintf("%s=%s%v", m.Name, m.State, m.Meta))
	}
	return "[" + strings.Join(parts, " ") + "]"
}

func memberState(p *Pool, name string) (string, string) {
	m, ok := p.Member(name)
	if !ok {
		return "", "unknown; members " + describe(p.Members())
	}
	return m.State, fmt.Sprintf("%s is %s", name, m.State)
}

// waitEvent reads ch until an event of typ for member name arrives.
func waitEvent(t *testing.T, ch <-chan MemberEvent, typ EventType, name string, timeout time.Duration) MemberEvent {
	t.Helper()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	var seen []string
	for {
		select {
		case ev, ok := <-ch:
			if !ok {
				t.Fatalf("waiting for %s %s: channel closed; saw %v", typ, name, seen)
			}
			seen = append(seen, string(ev.Type)+":"+ev.Member.Name)
			if ev.Type == typ && ev.Member.Name == name {
				return ev
			}
		case <-timer.C:
			t.Fatalf("no %s event for %s within %s; saw %v", typ, name, timeout, seen)
		}
	}
}

const converge = 15 * time.Second // generous: the fast profile converges in well under a second

func TestPoolsJoinAndSeeEachOther(t *testing.T) {
	tests := []struct {
		name    string
		servers int
		agents  int
	}{
		{"three servers", 3, 0},
		{"two servers three agents", 2, 3},
		{"one server two agents", 1, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var pools []*Pool
			wantMeta := map[string]map[string]string{}
			var wantServers []string
			for i := range tt.servers + tt.agents {
				name := fmt.Sprintf("s%d", i)
				meta := map[string]string{MetaRole: RoleServer, MetaAPI: fmt.Sprintf("127.0.0.1:%d", 4650+i), MetaRaft: fmt.Sprintf("127.0.0.1:%d", 4750+i)}
				if i >= tt.servers {
					name = fmt.Sprintf("agent-%d", i)
					meta = map[string]string{MetaRole: RoleAgent, MetaAPI: fmt.Sprintf("127.0.0.1:%d", 4850+i)}
				} else {
					wantServers = append(wantServers, name)
				}
				wantMeta[name] = meta
				pools = append(pools, startPool(t, name, meta, nil))
			}
			for _, p := range pools[1:] {
				joinTo(t, p, pools[0])
			}
			slices.Sort(wantServers)
			wantNames := slices.Sorted(maps.Keys(wantMeta))

			for _, p := range pools {
				wait.For(t, converge, p.Name()+" sees everyone alive with meta", func() (bool, string) {
					ms := p.Members()
					var names []string
					for _, m := range ms {
						if m.State != StateAlive || !maps.Equal(m.Meta, wantMeta[m.Name]) {
							return false, describe(ms)
						}
						names = append(names, m.Name)
					}
					return slices.Equal(names, wantNames), describe(ms)
				})
				if got := p.NumMembers(); got != len(pools) {
					t.Errorf("%s NumMembers = %d, want %d", p.Name(), got, len(pools))
				}
				var servers []string
				for _, m := range p.Servers() {
					servers = append(servers, m.Name)
					if m.Meta[MetaRole] != RoleServer {
						t.Errorf("%s Servers() returned %s with role %q", p.Name(), m.Name, m.Meta[MetaRole])
					}
				}
				if !slices.Equal(servers, wantServers) {
					t.Errorf("%s Servers() = %v, want %v", p.Name(), servers, wantServers)
				}
				for _, other := range pools {
					if !p.Reachable(other.Name()) {
						t.Errorf("%s: Reachable(%s) = false for an alive member", p.Name(), other.Name())
					}
					m, ok := p.Member(other.Name())
					if !ok || net.JoinHostPort(m.Addr, strconv.Itoa(m.Port)) != other.LocalAddr() {
						t.Errorf("%s: Member(%s) = %+v, %v; want address %s", p.Name(), other.Name(), m, ok, other.LocalAddr())
					}
				}
			}
			if pools[0].Reachable("no-such-member") {
				t.Error("Reachable(unknown) = true")
			}
		})
	}
}

func TestLocalAddrIsTheBoundPort(t *testing.T) {
	p := startPool(t, "solo", nil, nil)
	host, port, err := net.SplitHostPort(p.LocalAddr())
	if err != nil || host != "127.0.0.1" || port == "0" {
		t.Fatalf("LocalAddr() = %q (%v), want 127.0.0.1 and a picked port", p.LocalAddr(), err)
	}
	// The port is really ours: binding it again fails.
	if l, err := net.Listen("tcp", p.LocalAddr()); err == nil {
		l.Close()
		t.Fatalf("could listen on %s: the pool is not bound there", p.LocalAddr())
	}
	if got := p.Members(); len(got) != 1 || got[0].Name != "solo" || got[0].State != StateAlive {
		t.Fatalf("a lone pool's Members() = %s, want just itself alive", describe(got))
	}
}

func TestEncryptedPool(t *testing.T) {
	key16 := []byte("0123456789abcdef")
	key24 := []byte("0123456789abcdef01234567")
	key32 := []byte("0123456789abcdef0123456789abcdef")
	other16 := []byte("fedcba9876543210")

	tests := []struct {
		name      string
		poolKey   []byte
		joinerKey []byte
		wantJoin  bool
		// poolExtra and joinerExtra are secondary keys (a rotation under way).
		poolExtra, joinerExtra [][]byte
	}{
		{"same 16-byte key", key16, key16, true, nil, nil},
		{"same 24-byte key", key24, key24, true, nil, nil},
		{"same 32-byte key", key32, key32, true, nil, nil},
		{"different key", key16, other16, false, nil, nil},
		{"joiner without key", key16, nil, false, nil, nil},
		{"pool without key", nil, key16, false, nil, nil},
		{"rotation: both hold both keys, different primaries", key16, other16, true, [][]byte{other16}, [][]byte{key16}},
		{"rotation: joiner's primary unknown to the pool", key16, other16, false, nil, [][]byte{key16}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := startPool(t, "a", map[string]string{MetaRole: RoleServer}, func(c *Config) { c.Key, c.ExtraKeys = tt.poolKey, tt.poolExtra })
			b := startPool(t, "b", map[string]string{MetaRole: RoleServer}, func(c *Config) { c.Key, c.ExtraKeys = tt.poolKey, tt.poolExtra })
			joinTo(t, b, a)
			j := startPool(t, "joiner", map[string]string{MetaRole: RoleAgent}, func(c *Config) { c.Key, c.ExtraKeys = tt.joinerKey, tt.joinerExtra })

			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			n, err := j.Join(ctx, []string{a.LocalAddr()})
			if !tt.wantJoin {
				if err == nil {
					t.Fatalf("join with mismatched key succeeded (n=%d); a sees %s", n, describe(a.Members()))
				}
				if _, ok := a.Member("joiner"); ok {
					t.Fatalf("a knows the joiner despite the failed join: %s", describe(a.Members()))
				}
				return
			}
			if err != nil || n != 1 {
				t.Fatalf("join: n=%d err=%v", n, err)
			}
			for _, p := range []*Pool{a, b, j} {
				wait.For(t, converge, p.Name()+" sees 3 alive", func() (bool, string) {
					ms := p.Members()
					alive := 0
					for _, m := range ms {
						if m.State == StateAlive {
							alive++
						}
					}
					return alive == 3, describe(ms)
				})
			}
		})
	}
}

func TestShutdownMemberIsDetected(t *testing.T) {
	a := startPool(t, "a", nil, nil)
	b := startPool(t, "b", nil, nil)
	c := startPool(t, "c", nil, nil)
	joinTo(t, b, a)
	joinTo(t, c, a)
	for _, p := range []*Pool{a, b} {
		wait.For(t, converge, p.Name()+" sees c alive", func() (bool, string) {
			s, seen := memberState(p, "c")
			return s == StateAlive, seen
		})
	}
	events, unsubscribe := a.Subscribe()
	defer unsubscribe()

	if err := c.Shutdown(); err != nil {
		t.Fatal(err)
	}
	for _, p := range []*Pool{a, b} {
		wait.For(t, converge, p.Name()+" sees c suspect or dead", func() (bool, string) {
			s, seen := memberState(p, "c")
			return (s == StateSuspect || s == StateDead) && !p.Reachable("c"), seen
		})
		wait.For(t, converge, p.Name()+" sees c dead", func() (bool, string) {
			s, seen := memberState(p, "c")
			return s == StateDead, seen
		})
	}
	ev := waitEvent(t, events, EventFail, "c", converge)
	if ev.Member.State != StateDead {
		t.Errorf("fail event carries state %q, want dead", ev.Member.State)
	}
	if got := a.NumMembers(); got != 2 {
		t.Errorf("a.NumMembers() = %d after c died, want 2", got)
	}
	if !a.Reachable("b") {
		t.Error("a lost b while c died")
	}
}

func TestSuspectIsNotReachable(t *testing.T) {
	// A long suspicion timeout holds the shut-down member in suspect, so the
	// test sees memberlist's suspect state (read through the fork's
	// NodeState accessor) rather than racing it to dead.
	longSuspicion := func(c *Config) {
		c.tune = func(mc *memberlist.Config) { mc.SuspicionMult = 200 }
	}
	a := startPool(t, "a", nil, longSuspicion)
	b := startPool(t, "b", nil, longSuspicion)
	joinTo(t, b, a)
	wait.For(t, converge, "a sees b alive", func() (bool, string) {
		s, seen := memberState(a, "b")
		return s == StateAlive, seen
	})
	if err := b.Shutdown(); err != nil {
		t.Fatal(err)
	}
	wait.For(t, converge, "a sees b suspect", func() (bool, string) {
		s, seen := memberState(a, "b")
		return s == StateSuspect, seen
	})
	if a.Reachable("b") {
		t.Error("Reachable(b) = true for a suspect member")
	}
	if got := a.Servers(); len(got) != 0 {
		t.Errorf("Servers() = %s, want none", describe(got))
	}
}

func TestLeaveIsSeenAsLeft(t *testing.T) {
	a := startPool(t, "a", nil, nil)
	b := startPool(t, "b", nil, nil)
	joinTo(t, b, a)
	wait.For(t, converge, "a sees b alive", func() (bool, string) {
		s, seen := memberState(a, "b")
		return s == StateAlive, seen
	})
	events, unsubscribe := a.Subscribe()
	defer unsubscribe()

	if err := b.Leave(5 * time.Second); err != nil {
		t.Fatalf("leave: %v", err)
	}
	wait.For(t, converge, "a sees b left", func() (bool, string) {
		s, seen := memberState(a, "b")
		return s == StateLeft, seen
	})
	if a.Reachable("b") {
		t.Error("Reachable(b) = true after b left")
	}
	waitEvent(t, events, EventLeave, "b", converge)

	if err := b.Shutdown(); err != nil {
		t.Fatal(err)
	}
	if err := b.Leave(time.Second); !errors.Is(err, ErrShutdown) {
		t.Errorf("Leave after Shutdown = %v, want ErrShutdown", err)
	}
	if err := b.Shutdown(); err != nil {
		t.Errorf("second Shutdown = %v, want nil", err)
	}
}

func TestPing(t *testing.T) {
	a := startPool(t, "a", nil, nil)
	b := startPool(t, "b", nil, nil)
	joinTo(t, b, a)
	// b's Join returns once b has merged a's state; a merges b's a moment later.
	wait.For(t, converge, "a sees b alive", func() (bool, string) {
		s, seen := memberState(a, "b")
		return s == StateAlive, seen
	})
	ctx := context.Background()

	rtt, err := a.Ping(ctx, "b")
	if err != nil {
		t.Fatalf("ping live member: %v", err)
	}
	if rtt <= 0 {
		t.Errorf("ping rtt = %v, want > 0", rtt)
	}

	if _, err := a.Ping(ctx, "nobody"); !errors.Is(err, ErrUnknownMember) {
		t.Errorf("ping unknown member: err = %v, want ErrUnknownMember", err)
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := a.Ping(cancelled, "b"); !errors.Is(err, context.Canceled) {
		t.Errorf("ping with cancelled ctx: err = %v, want context.Canceled", err)
	}

	if err := b.Shutdown(); err != nil {
		t.Fatal(err)
	}
	if rtt, err := a.Ping(ctx, "b"); err == nil {
		t.Errorf("ping shut-down member returned rtt %v and no error", rtt)
	}
}

func TestUpdateMetaPropagates(t *testing.T) {
	a := startPool(t, "a", map[string]string{MetaRole: RoleAgent, MetaAPI: "127.0.0.1:1"}, nil)
	b := startPool(t, "b", map[string]string{MetaRole: RoleServer}, nil)
	joinTo(t, b, a)
	wait.For(t, converge, "b sees a", func() (bool, string) {
		s, seen := memberState(b, "a")
		return s == StateAlive, seen
	})
	events, unsubscribe := b.Subscribe()
	defer unsubscribe()

	want := map[string]string{MetaRole: RoleServer, MetaAPI: "127.0.0.1:2", MetaRaft: "127.0.0.1:3"}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.UpdateMeta(ctx, want); err != nil {
		t.Fatalf("update meta: %v", err)
	}
	wait.For(t, converge, "b sees a's new meta", func() (bool, string) {
		m, _ := b.Member("a")
		return maps.Equal(m.Meta, want), fmt.Sprint(m.Meta)
	})
	ev := waitEvent(t, events, EventUpdate, "a", converge)
	if !maps.Equal(ev.Member.Meta, want) {
		t.Errorf("update event meta = %v, want %v", ev.Member.Meta, want)
	}
	if got := b.Servers(); len(got) != 2 {
		t.Errorf("after a became a server, Servers() = %s, want a and b", describe(got))
	}
	if m, _ := a.Member("a"); !maps.Equal(m.Meta, want) {
		t.Errorf("a's own view of its meta = %v, want %v", m.Meta, want)
	}
}

func TestOversizedMetaIsRejected(t *testing.T) {
	big := map[string]string{MetaRole: RoleAgent, "blob": strings.Repeat("x", MaxMetaSize)}
	justFits := map[string]string{"k": strings.Repeat("x", MaxMetaSize-len(`{"k":""}`))}

	if _, err := encodeMeta(justFits); err != nil {
		t.Fatalf("meta of exactly %d bytes rejected: %v", MaxMetaSize, err)
	}

	tests := []struct {
		name string
		run  func(t *testing.T) error
	}{
		{"start", func(t *testing.T) error {
			p, err := Start(context.Background(), Config{Name: "big", BindAddr: "127.0.0.1", Meta: big, Profile: ProfileFast})
			if err == nil {
				p.Shutdown()
			}
			return err
		}},
		{"update", func(t *testing.T) error {
			p := startPool(t, "small", map[string]string{MetaRole: RoleAgent}, nil)
			err := p.UpdateMeta(context.Background(), big)
			if m, _ := p.Member("small"); m.Meta[MetaRole] != RoleAgent {
				t.Errorf("rejected update changed the meta to %v", m.Meta)
			}
			return err
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.run(t); !errors.Is(err, ErrMetaTooLarge) {
				t.Fatalf("err = %v, want ErrMetaTooLarge", err)
			}
		})
	}
}

func TestSubscribeJoinFailAndUnsubscribe(t *testing.T) {
	a := startPool(t, "a", nil, nil)
	events, unsubscribe := a.Subscribe()
	other, unsubscribeOther := a.Subscribe()
	defer unsubscribeOther()

	b := startPool(t, "b", map[string]string{MetaRole: RoleAgent}, nil)
	joinTo(t, b, a)
	ev := waitEvent(t, events, EventJoin, "b", converge)
	if ev.Member.State != StateAlive || ev.Member.Meta[MetaRole] != RoleAgent {
		t.Errorf("join event = %+v, want b alive with role agent", ev)
	}
	waitEvent(t, other, EventJoin, "b", converge)

	if err := b.Shutdown(); err != nil {
		t.Fatal(err)
	}
	waitEvent(t, events, EventFail, "b", converge)

	unsubscribe()
	unsubscribe() // idempotent
	wait.For(t, converge, "unsubscribed channel closed", func() (bool, string) {
		select {
		case ev, ok := <-events:
			return !ok, fmt.Sprintf("event %s %s", ev.Type, ev.Member.Name)
		default:
			return false, "open, nothing buffered"
		}
	})

	// Shutdown closes the remaining subscribers, and later ones start closed.
	if err := a.Shutdown(); err != nil {
		t.Fatal(err)
	}
	wait.For(t, converge, "subscriber closed by Shutdown", func() (bool, string) {
		select {
		case _, ok := <-other:
			return !ok, "an event"
		default:
			return false, "open, nothing buffered"
		}
	})
	late, _ := a.Subscribe()
	if _, ok := <-late; ok {
		t.Error("subscription after Shutdown delivered an event")
	}
}

func TestSlowSubscriberNeverBlocks(t *testing.T) {
	d := newDelegate(hclog.NewNullLogger(), nil)
	slow, _ := d.subscribe()
	fast, unsubscribe := d.subscribe()
	defer unsubscribe()

	const total = subscriberBuffer + 50
	done := make(chan struct{})
	received := 0
	go func() {
		defer close(done)
		for range fast {
			received++
			if received == total {
				return
			}
		}
	}()
	for i := range total {
		// record runs under memberlist's node lock in production: it must
		// return even though nobody reads slow.
		d.record(EventUpdate, Member{Name: fmt.Sprintf("m%d", i), State: StateAlive})
		if i%subscriberBuffer == 0 {
			// let the reader keep up so only the slow one drops
			wait.For(t, converge, "fast subscriber keeps up", func() (bool, string) {
				return len(fast) == 0, fmt.Sprintf("%d buffered", len(fast))
			})
		}
	}
	if got := len(slow); got != subscriberBuffer {
		t.Errorf("slow subscriber holds %d events, want %d", got, subscriberBuffer)
	}
	if got := d.dropped.Load(); got != total-subscriberBuffer {
		t.Errorf("dropped = %d, want %d", got, total-subscriberBuffer)
	}
	unsubscribe()
	<-done
	if received != total {
		t.Errorf("reading subscriber got %d events, want %d", received, total)
	}
}

// TestPoolStatesMatchMemberlist checks that the pool reports memberlist's
// own per-node states, read through the accessors of chime's memberlist fork
// (gossip/third_party/memberlist/chime_states.go), for each of alive, suspect, dead and
// left, and that the accessors report what memberlist does.
func TestPoolStatesMatchMemberlist(t *testing.T) {
	t.Run("lone pool", func(t *testing.T) {
		p := startPool(t, "self", nil, nil)
		states := p.ml.NodeStates()
		if len(states) != 1 || states["self"] != memberlist.StateAlive {
			t.Fatalf("NodeStates() = %v, want self alive", states)
		}
		if s, ok := p.ml.NodeState("self"); !ok || s != memberlist.StateAlive {
			t.Fatalf("NodeState(self) = %v, %v; want alive", s, ok)
		}
		if _, ok := p.ml.NodeState("nobody"); ok {
			t.Fatal("NodeState(nobody) found a node")
		}
		if m, ok := p.Member("self"); !ok || m.State != StateAlive {
			t.Fatalf("Member(self) = %+v, %v; want alive", m, ok)
		}
	})

	// A long suspicion timeout holds a shut-down member in suspect.
	longSuspicion := func(c *Config) {
		c.tune = func(mc *memberlist.Config) { mc.SuspicionMult = 200 }
	}
	shutdown := func(t *testing.T, b *Pool) {
		if err := b.Shutdown(); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name string
		tune func(*Config)
		act  func(t *testing.T, b *Pool) // brings b into want, as a sees it
		want memberlist.NodeStateType
		// memberlist's NumMembers on a: it counts alive and suspect nodes,
		// an independent check that the accessor reports memberlist's state.
		wantNum int
	}{
		{"alive", nil, func(*testing.T, *Pool) {}, memberlist.StateAlive, 2},
		{"suspect", longSuspicion, shutdown, memberlist.StateSuspect, 2},
		{"dead", nil, shutdown, memberlist.StateDead, 1},
		{"left", nil, func(t *testing.T, b *Pool) {
			if err := b.Leave(5 * time.Second); err != nil {
				t.Fatalf("leave: %v", err)
			}
		}, memberlist.StateLeft, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := startPool(t, "a", nil, tt.tune)
			b := startPool(t, "b", nil, tt.tune)
			joinTo(t, b, a)
			mlState := func(want memberlist.NodeStateType) func() (bool, string) {
				return func() (bool, string) {
					s, ok := a.ml.NodeState("b")
					return ok && s == want, fmt.Sprintf("known=%v state=%s", ok, stateName(s))
				}
			}
			wait.For(t, converge, "a's memberlist holds b alive", mlState(memberlist.StateAlive))
			tt.act(t, b)
			wait.For(t, converge, "a's memberlist holds b "+stateName(tt.want), mlState(tt.want))

			states := a.ml.NodeStates()
			if len(states) != 2 || states["a"] != memberlist.StateAlive || states["b"] != tt.want {
				t.Fatalf("NodeStates() = %v, want a alive and b %s", states, stateName(tt.want))
			}
			members := a.Members()
			if len(members) != len(states) {
				t.Fatalf("Members() = %s, memberlist knows %v", describe(members), states)
			}
			for _, m := range members {
				if want := stateName(states[m.Name]); m.State != want {
					t.Errorf("Members() has %s %s, memberlist has it %s", m.Name, m.State, want)
				}
				if one, ok := a.Member(m.Name); !ok || one.State != m.State {
					t.Errorf("Member(%s) = %+v, %v; Members() has it %s", m.Name, one, ok, m.State)
				}
			}
			if got, want := a.Reachable("b"), tt.want == memberlist.StateAlive; got != want {
				t.Errorf("Reachable(b) = %v with b %s, want %v", got, stateName(tt.want), want)
			}
			if got := a.NumMembers(); got != tt.wantNum {
				t.Errorf("NumMembers() = %d with b %s, want %d", got, stateName(tt.want), tt.wantNum)
			}
		})
	}
}

func TestRestartedMemberComesBack(t *testing.T) {
	a := startPool(t, "a", nil, nil)
	b := startPool(t, "agent-1", map[string]string{MetaRole: RoleAgent}, nil)
	joinTo(t, b, a)
	wait.For(t, converge, "a sees agent-1 alive", func() (bool, string) {
		s, seen := memberState(a, "agent-1")
		return s == StateAlive, seen
	})
	_, portStr, _ := net.SplitHostPort(b.LocalAddr())
	port, _ := strconv.Atoi(portStr)
	events, unsubscribe := a.Subscribe()
	defer unsubscribe()

	if err := b.Shutdown(); err != nil {
		t.Fatal(err)
	}
	wait.For(t, converge, "a sees agent-1 dead", func() (bool, string) {
		s, seen := memberState(a, "agent-1")
		return s == StateDead, seen
	})

	// Same name and address, as after an agent restart; new metadata.
	again := startPool(t, "agent-1", map[string]string{MetaRole: RoleAgent, MetaAPI: "127.0.0.1:9"}, func(c *Config) { c.BindPort = port })
	joinTo(t, again, a)
	wait.For(t, converge, "a sees agent-1 alive again with its new meta", func() (bool, string) {
		m, ok := a.Member("agent-1")
		return ok && m.State == StateAlive && m.Meta[MetaAPI] == "127.0.0.1:9" && a.Reachable("agent-1"), fmt.Sprintf("%+v", m)
	})
	waitEvent(t, events, EventJoin, "agent-1", converge)
}

func BenchmarkJoin(b *testing.B) {
	seed, err := Start(context.Background(), Config{Name: "seed", BindAddr: "127.0.0.1", Profile: ProfileFast})
	if err != nil {
		b.Fatal(err)
	}
	defer seed.Shutdown()
	ctx := context.Background()
	b.ResetTimer()
	for i := range b.N {
		p, err := Start(ctx, Config{Name: fmt.Sprintf("m%d", i), BindAddr: "127.0.0.1", Profile: ProfileFast})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := p.Join(ctx, []string{seed.LocalAddr()}); err != nil {
			b.Fatal(err)
		}
		if err := p.Leave(time.Second); err != nil {
			b.Fatal(err)
		}
		p.Shutdown()
	}
}
