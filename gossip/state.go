package gossip

import (
	"fmt"
	"reflect"
	"sync"
	"unsafe"

	"github.com/hashicorp/memberlist"
)

// Member states as the pool reports them.
const (
	StateAlive   = "alive"   // answering probes
	StateSuspect = "suspect" // a probe (direct and indirect) failed; not yet declared dead
	StateDead    = "dead"    // the suspicion timed out without a refutation
	StateLeft    = "left"    // the member announced its departure (Leave)
)

func stateName(s memberlist.NodeStateType) string {
	switch s {
	case memberlist.StateAlive:
		return StateAlive
	case memberlist.StateSuspect:
		return StateSuspect
	case memberlist.StateDead:
		return StateDead
	case memberlist.StateLeft:
		return StateLeft
	}
	return fmt.Sprintf("unknown(%d)", int(s))
}

// stateReader reads memberlist's own per-node state (alive, suspect, dead,
// left) under memberlist's own node lock.
//
// Why reflection: memberlist v0.7.0 keeps that state in the unexported
// nodeState.State; the exported Node.State it hands out is never set, and no
// event fires when a node becomes suspect. Reading Node fields through the
// pointers Members() returns races with memberlist's in-place updates
// (hashicorp/memberlist#250, #306). So the reader takes memberlist's nodeLock
// and copies the states out. newStateReader checks every field it relies on;
// if a memberlist upgrade changes them it returns an error, the pool falls
// back to what events tell it (no suspect, "left" reported as "dead"), and
// TestStateReaderMatchesMemberlist fails.
type stateReader struct {
	lock     *sync.RWMutex // memberlist's nodeLock
	nodeMap  reflect.Value // memberlist's nodeMap: map[string]*nodeState
	stateIdx []int         // index path of nodeState.State
}

func newStateReader(ml *memberlist.Memberlist) (*stateReader, error) {
	v := reflect.ValueOf(ml).Elem()

	lock := v.FieldByName("nodeLock")
	if !lock.IsValid() || lock.Type() != reflect.TypeFor[sync.RWMutex]() {
		return nil, fmt.Errorf("memberlist.Memberlist has no nodeLock sync.RWMutex")
	}
	nodeMap := v.FieldByName("nodeMap")
	if !nodeMap.IsValid() || nodeMap.Kind() != reflect.Map || nodeMap.Type().Key().Kind() != reflect.String {
		return nil, fmt.Errorf("memberlist.Memberlist has no nodeMap map[string]*nodeState")
	}
	elem := nodeMap.Type().Elem()
	if elem.Kind() != reflect.Pointer || elem.Elem().Kind() != reflect.Struct {
		return nil, fmt.Errorf("memberlist nodeMap values are %s, not pointers to structs", elem)
	}
	// FieldByName picks the shallowest State: nodeState.State, not the
	// embedded (and never set) Node.State.
	field, ok := elem.Elem().FieldByName("State")
	if !ok || field.Type != reflect.TypeFor[memberlist.NodeStateType]() || len(field.Index) != 1 {
		return nil, fmt.Errorf("memberlist nodeState has no State NodeStateType field")
	}
	return &stateReader{
		lock:     (*sync.RWMutex)(unsafe.Pointer(lock.UnsafeAddr())),
		nodeMap:  nodeMap,
		stateIdx: field.Index,
	}, nil
}

// states returns the state of every node memberlist knows. It takes
// memberlist's node lock: never call it from a memberlist callback.
func (r *stateReader) states() map[string]memberlist.NodeStateType {
	r.lock.RLock()
	defer r.lock.RUnlock()
	out := make(map[string]memberlist.NodeStateType, r.nodeMap.Len())
	it := r.nodeMap.MapRange()
	for it.Next() {
		ns := it.Value()
		if ns.IsNil() {
			continue
		}
		out[it.Key().String()] = memberlist.NodeStateType(ns.Elem().FieldByIndex(r.stateIdx).Int())
	}
	return out
}

// state returns one node's state, taking memberlist's node lock: never call
// it from a memberlist callback.
func (r *stateReader) state(name string) (memberlist.NodeStateType, bool) {
	r.lock.RLock()
	defer r.lock.RUnlock()
	return r.stateLocked(name)
}

// stateLocked returns one node's state. Only for memberlist callbacks, which
// run with the node lock already held.
func (r *stateReader) stateLocked(name string) (memberlist.NodeStateType, bool) {
	ns := r.nodeMap.MapIndex(reflect.ValueOf(name))
	if !ns.IsValid() || ns.IsNil() {
		return 0, false
	}
	return memberlist.NodeStateType(ns.Elem().FieldByIndex(r.stateIdx).Int()), true
}
