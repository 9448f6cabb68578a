package gossip

import (
	"net"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/memberlist"
)

// EventType says what happened to a member.
type EventType string

const (
	EventJoin   EventType = "join"   // a member appeared (or came back after dead/left)
	EventUpdate EventType = "update" // a member's metadata changed
	EventLeave  EventType = "leave"  // a member announced its departure
	EventFail   EventType = "fail"   // memberlist declared a member dead
)

// MemberEvent is one membership change as seen by this member.
type MemberEvent struct {
	Type   EventType
	Member Member
}

// subscriberBuffer is how many events a subscriber may fall behind before
// events to it are dropped.
const subscriberBuffer = 128

// delegate receives memberlist's callbacks. memberlist calls the event
// methods while holding its node lock, so they copy what they need, call
// back into memberlist only through the lock-free NodeStateLocked, and never
// block: a slow subscriber loses events rather than stalling gossip.
type delegate struct {
	log hclog.Logger
	ml  atomic.Pointer[memberlist.Memberlist] // set right after memberlist.Create returns

	metaMu sync.Mutex
	meta   []byte // local metadata, JSON

	mu      sync.Mutex
	members map[string]*Member // every member ever seen, by name; State as of the last event
	subs    map[*subscriber]struct{}
	closed  bool // Shutdown: no new subscribers, channels closed

	dropped atomic.Uint64 // events dropped for slow subscribers, all time

	// keyring is set when gossip is encrypted: a keyring message from a
	// member (which holds a key: memberlist decrypted it) is applied to it.
	keyring *keyringState
}

type subscriber struct {
	ch      chan MemberEvent
	dropped uint64 // guarded by delegate.mu
}

func newDelegate(log hclog.Logger, meta []byte) *delegate {
	return &delegate{
		log:     log,
		meta:    meta,
		members: map[string]*Member{},
		subs:    map[*subscriber]struct{}{},
	}
}

// NodeMeta implements memberlist.Delegate.
func (d *delegate) NodeMeta(limit int) []byte {
	d.metaMu.Lock()
	defer d.metaMu.Unlock()
	if len(d.meta) > limit {
		// encodeMeta checked the size already; never hand memberlist more
		// than it allows (it panics).
		return nil
	}
	return append([]byte(nil), d.meta...)
}

func (d *delegate) setMeta(b []byte) {
	d.metaMu.Lock()
	defer d.metaMu.Unlock()
	d.meta = b
}

// NotifyMsg, GetBroadcasts, LocalState and MergeRemoteState implement
// memberlist.Delegate; chime sends no user messages over gossip.
func (d *delegate) NotifyMsg(b []byte) {
	if d.keyring != nil && len(b) > 0 && b[0] == keyringMsgType {
		if err := d.keyring.applyMsg(b[1:]); err != nil {
			d.log.Warn("gossip keyring change refused", "error", err)
		}
	}
}
func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }
func (d *delegate) LocalState(join bool) []byte                { return nil }
func (d *delegate) MergeRemoteState(buf []byte, join bool)     {}

// NotifyJoin implements memberlist.EventDelegate.
func (d *delegate) NotifyJoin(n *memberlist.Node) {
	m := d.memberFromNode(n, StateAlive)
	d.log.Info("member joined", "member", m.Name, "addr", net.JoinHostPort(m.Addr, strconv.Itoa(m.Port)), "role", m.Meta[MetaRole])
	d.record(EventJoin, m)
}

// NotifyUpdate implements memberlist.EventDelegate.
func (d *delegate) NotifyUpdate(n *memberlist.Node) {
	m := d.memberFromNode(n, StateAlive)
	d.log.Debug("member updated", "member", m.Name, "meta", m.Meta)
	d.record(EventUpdate, m)
}

// NotifyLeave implements memberlist.EventDelegate. memberlist calls it for
// both a departure and a death; the state it has just set tells them apart.
// It runs under memberlist's node lock, hence NodeStateLocked.
func (d *delegate) NotifyLeave(n *memberlist.Node) {
	state, typ := StateDead, EventFail
	// ml is nil only until Start stores it, before this member has joined
	// anyone: memberlist knows no other node to declare dead or left.
	if ml := d.ml.Load(); ml != nil {
		if s, ok := ml.NodeStateLocked(n.Name); ok && s == memberlist.StateLeft {
			state, typ = StateLeft, EventLeave
		}
	}
	m := d.memberFromNode(n, state)
	if typ == EventLeave {
		d.log.Info("member left", "member", m.Name)
	} else {
		d.log.Info("member failed", "member", m.Name)
	}
	d.record(typ, m)
}

// memberFromNode copies n; it runs under memberlist's node lock, the only
// place n's fields may be read.
func (d *delegate) memberFromNode(n *memberlist.Node, state string) Member {
	meta, err := decodeMeta(n.Meta)
	if err != nil {
		d.log.Warn("ignoring undecodable member meta", "member", n.Name, "error", err)
		meta = map[string]string{}
	}
	return Member{Name: n.Name, Addr: n.Addr.String(), Port: int(n.Port), State: state, Meta: meta}
}

// record stores m and fans the event out without blocking.
func (d *delegate) record(typ EventType, m Member) {
	d.mu.Lock()
	defer d.mu.Unlock()
	stored := m
	d.members[m.Name] = &stored
	for s := range d.subs {
		select {
		case s.ch <- MemberEvent{Type: typ, Member: m.clone()}:
		default:
			s.dropped++
			d.dropped.Add(1)
			if s.dropped == 1 || s.dropped%100 == 0 {
				d.log.Warn("slow gossip subscriber, dropping events", "dropped", s.dropped)
			}
		}
	}
}

// subscribe registers a new subscriber; after shutdown its channel is
// already closed.
func (d *delegate) subscribe() (<-chan MemberEvent, func()) {
	s := &subscriber{ch: make(chan MemberEvent, subscriberBuffer)}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		close(s.ch)
		return s.ch, func() {}
	}
	d.subs[s] = struct{}{}
	var once sync.Once
	return s.ch, func() {
		once.Do(func() {
			d.mu.Lock()
			defer d.mu.Unlock()
			if _, ok := d.subs[s]; ok {
				delete(d.subs, s)
				close(s.ch)
			}
		})
	}
}

// closeSubscribers closes every subscriber channel; later subscribers get a
// closed channel.
func (d *delegate) closeSubscribers() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.closed = true
	for s := range d.subs {
		delete(d.subs, s)
		close(s.ch)
	}
}

// snapshot copies the member table.
func (d *delegate) snapshot() map[string]Member {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make(map[string]Member, len(d.members))
	for name, m := range d.members {
		out[name] = m.clone()
	}
	return out
}

func (d *delegate) member(name string) (Member, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	m, ok := d.members[name]
	if !ok {
		return Member{}, false
	}
	return m.clone(), true
}
