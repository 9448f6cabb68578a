package raftlog

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

func openTestStore(t testing.TB, dir string) *Store {
	t.Helper()
	s, err := Open(dir, nil)
	if err != nil {
		t.Fatalf("Open(%s): %v", dir, err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func TestStableStore(t *testing.T) {
	dir := t.TempDir()
	s := openTestStore(t, dir)
	// raft compares err.Error() with the literal "not found".
	if v, err := s.Get([]byte("CurrentTerm")); v != nil || err == nil || err.Error() != "not found" {
		t.Errorf("Get(missing) = %v, %v; want nil, error \"not found\"", v, err)
	}
	if v, err := s.GetUint64([]byte("CurrentTerm")); v != 0 || err == nil || err.Error() != "not found" {
		t.Errorf("GetUint64(missing) = %d, %v; want 0, error \"not found\"", v, err)
	}
	cases := []struct {
		name string
		key  string
		val  []byte
	}{
		{"plain", "LastVoteCand", []byte("node-2")},
		{"empty value", "empty", []byte{}},
		{"binary", "bin", []byte{0, 0xff, 0}},
		{"overwrite", "LastVoteCand", []byte("node-3")},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if err := s.Set([]byte(tc.key), tc.val); err != nil {
				t.Fatalf("Set: %v", err)
			}
			got, err := s.Get([]byte(tc.key))
			if err != nil || got == nil || string(got) != string(tc.val) {
				t.Fatalf("Get = %q (nil: %v), %v; want %q", got, got == nil, err, tc.val)
			}
		})
	}
	uints := []struct {
		key string
		val uint64
	}{{"CurrentTerm", 0}, {"CurrentTerm", 7}, {"LastVoteTerm", math.MaxUint64}}
	for _, tc := range uints {
		if err := s.SetUint64([]byte(tc.key), tc.val); err != nil {
			t.Fatalf("SetUint64(%s, %d): %v", tc.key, tc.val, err)
		}
		if got, err := s.GetUint64([]byte(tc.key)); err != nil || got != tc.val {
			t.Errorf("GetUint64(%s) = %d, %v; want %d", tc.key, got, err, tc.val)
		}
	}
	// A value of the wrong size is corruption, not "not found".
	if _, err := s.GetUint64([]byte("LastVoteCand")); err == nil || err.Error() == "not found" {
		t.Errorf("GetUint64 of a 6-byte value = %v, want a size error", err)
	}
	// Stable keys and the log are apart; both survive a reopen.
	storeRange(t, s, 1, 30, 7)
	if err := s.DeleteRange(1, 10); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	s = openTestStore(t, dir)
	checkLog(t, s, 11, 30)
	if v, err := s.GetUint64([]byte("LastVoteTerm")); err != nil || v != math.MaxUint64 {
		t.Errorf("GetUint64(LastVoteTerm) after reopen = %d, %v", v, err)
	}
	if v, err := s.Get([]byte("LastVoteCand")); err != nil || string(v) != "node-3" {
		t.Errorf("Get(LastVoteCand) after reopen = %q, %v; want node-3", v, err)
	}
	for _, name := range []string{StableFile, WALDir} {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			t.Errorf("data dir: %v", err)
		}
	}
}

func TestStoreLockedByAnother(t *testing.T) {
	dir := t.TempDir()
	openTestStore(t, dir)
	// bbolt's flock is per open file, so a second open in this process is refused like
	// one from another process would be; a short timeout keeps the test fast.
	start := time.Now()
	second, err := open(dir, 50*time.Millisecond, WALOptions{})
	if err == nil {
		_ = second.Close()
		t.Fatal("second open of a locked data dir succeeded")
	}
	if !errors.Is(err, berrors.ErrTimeout) || !strings.Contains(err.Error(), "locked by another process") {
		t.Fatalf("second open error = %v, want a bolt.ErrTimeout saying the file is locked", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("second open took %v", d)
	}
}

// writeLegacy writes a raft.db as chime before the WAL did: the logs bucket holds the given
// indexes (testLog), the stable bucket a term.
func writeLegacy(t *testing.T, dir string, indexes []uint64) {
	t.Helper()
	db, err := bolt.Open(filepath.Join(dir, StableFile), 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.Update(func(tx *bolt.Tx) error {
		logs, err := tx.CreateBucketIfNotExists(bucketLogs)
		if err != nil {
			return err
		}
		for _, i := range indexes {
			if err := logs.Put(binary.BigEndian.AppendUint64(nil, i), encodeLog(nil, testLog(i))); err != nil {
				return err
			}
		}
		stable, err := tx.CreateBucketIfNotExists(bucketStable)
		if err != nil {
			return err
		}
		return stable.Put([]byte("CurrentTerm"), binary.BigEndian.AppendUint64(nil, 42))
	})
	if err != nil {
		t.Fatal(err)
	}
}

func legacyKeys(t *testing.T, dir string) (n int, bucket bool) {
	t.Helper()
	db, err := bolt.Open(filepath.Join(dir, StableFile), 0o600, &bolt.Options{Timeout: time.Second, ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	_ = db.View(func(tx *bolt.Tx) error {
		if b := tx.Bucket(bucketLogs); b != nil {
			bucket = true
			n = b.Stats().KeyN
		}
		return nil
	})
	return n, bucket
}

func span(first, last uint64) []uint64 {
	var out []uint64
	for i := first; i <= last; i++ {
		out = append(out, i)
	}
	return out
}

// TestMigrateFromRaftDB: a data dir of chime before the WAL opens with its log moved into
// the WAL and out of raft.db, whatever step of the move a crash interrupted.
func TestMigrateFromRaftDB(t *testing.T) {
	cases := []struct {
		name        string
		legacy      []uint64
		prepare     func(t *testing.T, dir string) // the state a crash left
		first, last uint64
		err         string
	}{
		{"fresh data dir", nil, nil, 0, 0, ""},
		{"empty logs bucket", []uint64{}, nil, 0, 0, ""},
		{"contiguous log", span(1, 3000), nil, 1, 3000, ""},
		{"compacted log", span(500, 2600), nil, 500, 2600, ""},
		// raft left a gap after installing a snapshot: what is below it is older than the snapshot.
		{"gap after a snapshot install", append(span(10, 40), span(100, 150)...), nil, 100, 150, ""},
		{"crash during the build", span(1, 200), func(t *testing.T, dir string) {
			// A partial WAL in raft-wal.tmp/: thrown away and built again.
			w, err := OpenWAL(filepath.Join(dir, WALDir+".tmp"), WALOptions{})
			if err != nil {
				t.Fatal(err)
			}
			storeRange(t, w, 1, 50, 50)
			_ = w.Close()
		}, 1, 200, ""},
		{"crash after the rename, before the bucket was deleted", span(1, 200), func(t *testing.T, dir string) {
			w, err := OpenWAL(filepath.Join(dir, WALDir), WALOptions{})
			if err != nil {
				t.Fatal(err)
			}
			storeRange(t, w, 1, 200, 64)
			_ = w.Close()
		}, 1, 200, ""},
		{"bucket written after the move", span(1, 250), func(t *testing.T, dir string) {
			w, err := OpenWAL(filepath.Join(dir, WALDir), WALOptions{})
			if err != nil {
				t.Fatal(err)
			}
			storeRange(t, w, 1, 200, 64)
			_ = w.Close()
		}, 0, 0, "ends at index 250 but"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if tc.legacy != nil {
				writeLegacy(t, dir, tc.legacy)
			}
			if tc.prepare != nil {
				tc.prepare(t, dir)
			}
			s, err := Open(dir, nil)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					if err == nil {
						_ = s.Close()
					}
					t.Fatalf("Open = %v, want an error containing %q", err, tc.err)
				}
				if n, _ := legacyKeys(t, dir); n != len(tc.legacy) {
					t.Errorf("raft.db's logs bucket holds %d entries after a refused open, want %d untouched", n, len(tc.legacy))
				}
				return
			}
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			checkLog(t, s, tc.first, tc.last)
			if tc.legacy != nil {
				if v, err := s.GetUint64([]byte("CurrentTerm")); err != nil || v != 42 {
					t.Errorf("CurrentTerm after the move = %d, %v; want 42", v, err)
				}
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			if n, bucket := legacyKeys(t, dir); bucket {
				t.Errorf("raft.db still has a logs bucket (%d entries) after the move", n)
			}
			if _, err := os.Stat(filepath.Join(dir, WALDir+".tmp")); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s.tmp left behind: %v", WALDir, err)
			}
			// Opened again: the same log, nothing copied twice; appends continue.
			s = openTestStore(t, dir)
			checkLog(t, s, tc.first, tc.last)
			storeRange(t, s, tc.last+1, tc.last+10, 10)
			first := tc.first
			if first == 0 {
				first = 1
			}
			checkLog(t, s, first, tc.last+10)
		})
	}
}

// countingFSM records which payloads it applied. Payloads are unique per test, so a
// command retried after a leadership change is counted once.
type countingFSM struct {
	mu   sync.Mutex
	seen map[uint64]bool
}

func newCountingFSM() *countingFSM { return &countingFSM{seen: map[uint64]bool{}} }

func (f *countingFSM) Apply(l *raft.Log) interface{} {
	if len(l.Data) != 8 {
		return fmt.Errorf("payload of %d bytes", len(l.Data))
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.seen[binary.BigEndian.Uint64(l.Data)] = true
	return len(f.seen)
}

func (f *countingFSM) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var buf []byte
	for v := range f.seen {
		buf = binary.BigEndian.AppendUint64(buf, v)
	}
	return countingSnapshot(buf), nil
}

func (f *countingFSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		return err
	}
	if len(b)%8 != 0 {
		return fmt.Errorf("snapshot of %d bytes", len(b))
	}
	seen := map[uint64]bool{}
	for ; len(b) > 0; b = b[8:] {
		seen[binary.BigEndian.Uint64(b)] = true
	}
	f.mu.Lock()
	f.seen = seen
	f.mu.Unlock()
	return nil
}

// missing returns the payloads in [0, n) not applied yet (at most 5, for messages) and the count.
func (f *countingFSM) missing(n uint64) ([]uint64, int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []uint64
	count := 0
	for i := uint64(0); i < n; i++ {
		if !f.seen[i] {
			count++
			if len(out) < 5 {
				out = append(out, i)
			}
		}
	}
	return out, count
}

type countingSnapshot []byte

func (s countingSnapshot) Persist(sink raft.SnapshotSink) error {
	if _, err := sink.Write(s); err != nil {
		_ = sink.Cancel()
		return err
	}
	return sink.Close()
}

func (countingSnapshot) Release() {}

// lockedBuffer collects the raft logs of a test; they are printed only if it fails.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// raftNode is one member of the in-process test cluster.
type raftNode struct {
	id    raft.ServerID
	addr  raft.ServerAddress
	dir   string
	store *Store
	fsm   *countingFSM
	trans *raft.InmemTransport
	raft  *raft.Raft
}

// waitFor polls cond until it holds or the deadline passes; on failure it reports what
// cond last saw.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, seen := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s; last seen: %s", timeout, what, seen)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestRaftClusterOnStore(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a 3-node raft cluster")
	}
	logs := &lockedBuffer{}
	t.Cleanup(func() {
		if t.Failed() {
			out := logs.String()
			if len(out) > 64<<10 {
				out = "...\n" + out[len(out)-64<<10:]
			}
			t.Logf("raft logs:\n%s", out)
		}
	})

	nodes := make([]*raftNode, 3)
	for i := range nodes {
		id := raft.ServerID(fmt.Sprintf("n%d", i))
		nodes[i] = &raftNode{id: id, addr: raft.ServerAddress(id), dir: t.TempDir()}
	}
	connect := func(n *raftNode) {
		for _, o := range nodes {
			if o != n && o.trans != nil {
				n.trans.Connect(o.addr, o.trans)
				o.trans.Connect(n.addr, n.trans)
			}
		}
	}
	start := func(n *raftNode) {
		t.Helper()
		var err error
		// Small segments: the cluster's appends rotate them and its compactions remove them.
		if n.store, err = open(n.dir, time.Second, WALOptions{SegmentSize: 8 << 10}); err != nil {
			t.Fatalf("open the store of %s: %v", n.id, err)
		}
		snaps, err := raft.NewFileSnapshotStoreWithLogger(n.dir, 2, hclog.NewNullLogger())
		if err != nil {
			t.Fatalf("snapshot store: %v", err)
		}
		_, n.trans = raft.NewInmemTransport(n.addr)
		connect(n)
		n.fsm = newCountingFSM()
		conf := raft.DefaultConfig()
		conf.LocalID = n.id
		conf.HeartbeatTimeout = 150 * time.Millisecond
		conf.ElectionTimeout = 150 * time.Millisecond
		conf.LeaderLeaseTimeout = 100 * time.Millisecond
		conf.CommitTimeout = 5 * time.Millisecond
		// Snapshot and compact often, so raft itself calls DeleteRange on our store
		// and the restarted node may need an InstallSnapshot.
		conf.SnapshotThreshold = 50
		conf.SnapshotInterval = 100 * time.Millisecond
		conf.TrailingLogs = 20
		conf.Logger = hclog.New(&hclog.LoggerOptions{Name: "raft." + string(n.id), Level: hclog.Info, Output: logs})
		n.raft, err = raft.NewRaft(conf, n.fsm, n.store, n.store, snaps, n.trans)
		if err != nil {
			t.Fatalf("start raft %s: %v", n.id, err)
		}
	}
	stop := func(n *raftNode) {
		t.Helper()
		if n.raft == nil {
			return
		}
		if err := n.raft.Shutdown().Error(); err != nil {
			t.Errorf("shutdown %s: %v", n.id, err)
		}
		n.raft = nil
		if err := n.store.Close(); err != nil {
			t.Errorf("close store of %s: %v", n.id, err)
		}
	}
	t.Cleanup(func() {
		for _, n := range nodes {
			stop(n)
		}
	})

	for _, n := range nodes {
		start(n)
	}
	var servers []raft.Server
	for _, n := range nodes {
		servers = append(servers, raft.Server{ID: n.id, Address: n.addr})
	}
	if err := nodes[0].raft.BootstrapCluster(raft.Configuration{Servers: servers}).Error(); err != nil {
		t.Fatalf("bootstrap: %v", err)
	}

	leader := func() *raftNode {
		t.Helper()
		var found *raftNode
		waitFor(t, 10*time.Second, "a leader", func() (bool, string) {
			var states []string
			for _, n := range nodes {
				if n.raft == nil {
					continue
				}
				st := n.raft.State()
				states = append(states, fmt.Sprintf("%s=%v", n.id, st))
				if st == raft.Leader {
					found = n
					return true, ""
				}
			}
			return false, strings.Join(states, " ")
		})
		return found
	}
	// apply commits payloads from..to-1, retrying on the leader of the moment; a payload
	// applied twice after ErrLeadershipLost is counted once by the FSM.
	var lastIndex uint64
	apply := func(from, to uint64) {
		t.Helper()
		for p := from; p < to; p++ {
			data := binary.BigEndian.AppendUint64(nil, p)
			var err error
			for attempt := 0; attempt < 20; attempt++ {
				fut := leader().raft.Apply(data, 5*time.Second)
				if err = fut.Error(); err == nil {
					lastIndex = fut.Index()
					break
				}
				if !errors.Is(err, raft.ErrNotLeader) && !errors.Is(err, raft.ErrLeadershipLost) && !errors.Is(err, raft.ErrEnqueueTimeout) {
					t.Fatalf("apply payload %d: %v", p, err)
				}
			}
			if err != nil {
				t.Fatalf("apply payload %d: still failing after retries: %v", p, err)
			}
		}
	}
	waitApplied := func(n *raftNode, count uint64) {
		t.Helper()
		waitFor(t, 20*time.Second, fmt.Sprintf("%s to apply %d payloads", n.id, count), func() (bool, string) {
			some, missing := n.fsm.missing(count)
			return missing == 0, fmt.Sprintf("%d missing, e.g. %v", missing, some)
		})
	}

	apply(0, 200)
	for _, n := range nodes {
		waitApplied(n, 200)
	}

	// Stop a follower, keep writing, then bring it back on the same files.
	l := leader()
	var f *raftNode
	for _, n := range nodes {
		if n != l {
			f = n
			break
		}
	}
	stop(f)
	stopped, err := Open(f.dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	lastBefore, err := stopped.LastIndex()
	if err != nil || lastBefore == 0 {
		t.Fatalf("LastIndex of the stopped follower = %d, %v; want > 0", lastBefore, err)
	}
	term, err := stopped.GetUint64([]byte("CurrentTerm")) // raft's key for the persisted term
	if err != nil || term == 0 {
		t.Fatalf("CurrentTerm persisted by the follower = %d, %v; want > 0", term, err)
	}
	if err := stopped.Close(); err != nil {
		t.Fatal(err)
	}

	apply(200, 300)
	start(f)
	waitApplied(f, 300)
	// The follower may have caught up through InstallSnapshot, which leaves a gap in its
	// log store; entries committed from now on must land in the store itself.
	batchFirst := lastIndex + 1
	apply(300, 310)
	waitApplied(f, 310)
	waitFor(t, 10*time.Second, fmt.Sprintf("%s's log store to reach index %d", f.id, lastIndex), func() (bool, string) {
		last, err := f.store.LastIndex()
		return err == nil && last >= lastIndex, fmt.Sprintf("last index %d, err %v (was %d before the restart)", last, err, lastBefore)
	})
	// Raft compacted the leader's log through our DeleteRange.
	waitFor(t, 10*time.Second, "the leader to compact its log", func() (bool, string) {
		ld := leader()
		first, err := ld.store.FirstIndex()
		return err == nil && first > 1, fmt.Sprintf("%s first index %d, err %v", ld.id, first, err)
	})
	// Every index all members still hold is identical everywhere, and the last batch is
	// held by all of them.
	waitFor(t, 10*time.Second, "identical logs on all members", func() (bool, string) {
		var lo, hi uint64 = 0, math.MaxUint64
		for _, n := range nodes {
			first, err1 := n.store.FirstIndex()
			last, err2 := n.store.LastIndex()
			if err1 != nil || err2 != nil {
				return false, fmt.Sprintf("%s: %v %v", n.id, err1, err2)
			}
			lo, hi = max(lo, first), min(hi, last)
		}
		if lo > batchFirst || hi < lastIndex {
			return false, fmt.Sprintf("common range %d..%d does not cover the last batch %d..%d", lo, hi, batchFirst, lastIndex)
		}
	indexes:
		for i := lo; i <= hi; i++ {
			var entries []string
			for _, n := range nodes {
				var e raft.Log
				err := n.store.GetLog(i, &e)
				if err == raft.ErrLogNotFound && i < batchFirst {
					continue indexes // a gap left by compaction or InstallSnapshot
				}
				if err != nil {
					return false, fmt.Sprintf("%s GetLog(%d): %v", n.id, i, err)
				}
				entries = append(entries, fmt.Sprintf("%d/%d/%v/%x", e.Index, e.Term, e.Type, e.Data))
			}
			sort.Strings(entries)
			if entries[0] != entries[len(entries)-1] {
				return false, fmt.Sprintf("index %d differs: %v", i, entries)
			}
		}
		return true, ""
	})

	// Every member stopped and started again on its files: the log, the term and the
	// snapshots bring each back, and the cluster keeps committing.
	for _, n := range nodes {
		stop(n)
	}
	for _, n := range nodes {
		start(n)
	}
	apply(310, 400)
	for _, n := range nodes {
		waitApplied(n, 400)
	}
}
