package fsm

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

// Helpers in this file carry an "ls" prefix: the rest of package fsm is written in parallel
// and must not collide with them.

func lsOpen(t testing.TB, path string) *LogStore {
	t.Helper()
	s, err := OpenLogStore(path)
	if err != nil {
		t.Fatalf("OpenLogStore(%s): %v", path, err)
	}
	return s
}

func lsOpenTemp(t testing.TB) *LogStore {
	t.Helper()
	s := lsOpen(t, filepath.Join(t.TempDir(), "raft.db"))
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func lsLogsEqual(a, b *raft.Log) bool {
	return a.Index == b.Index && a.Term == b.Term && a.Type == b.Type &&
		bytes.Equal(a.Data, b.Data) && bytes.Equal(a.Extensions, b.Extensions) &&
		a.AppendedAt.Equal(b.AppendedAt)
}

func lsLog(index uint64) *raft.Log {
	return &raft.Log{
		Index:      index,
		Term:       index/10 + 1,
		Type:       raft.LogCommand,
		Data:       []byte(fmt.Sprintf("entry-%d", index)),
		AppendedAt: time.Unix(1_700_000_000+int64(index), int64(index)),
	}
}

// lsStoreRange stores entries first..last and fails the test on error.
func lsStoreRange(t testing.TB, s *LogStore, first, last uint64) {
	t.Helper()
	var logs []*raft.Log
	for i := first; i <= last; i++ {
		logs = append(logs, lsLog(i))
	}
	if err := s.StoreLogs(logs); err != nil {
		t.Fatalf("StoreLogs(%d..%d): %v", first, last, err)
	}
}

var lsSampleLogs = []struct {
	name string
	log  raft.Log
}{
	{"zero", raft.Log{}},
	{"command", raft.Log{Index: 1, Term: 1, Type: raft.LogCommand, Data: []byte("hello")}},
	{"all fields", raft.Log{
		Index: 42, Term: 7, Type: raft.LogConfiguration,
		Data: []byte{0, 1, 2, 255}, Extensions: []byte("ext"),
		AppendedAt: time.Date(2026, 11, 3, 12, 30, 45, 123456789, time.UTC),
	}},
	{"max values", raft.Log{
		Index: math.MaxUint64, Term: math.MaxUint64, Type: raft.LogType(255),
		AppendedAt: time.Unix(math.MaxInt32*4, 999_999_999),
	}},
	{"before 1970", raft.Log{Index: 3, Term: 2, Type: raft.LogNoop, AppendedAt: time.Date(1960, 1, 2, 3, 4, 5, 6, time.UTC)}},
	{"local time with monotonic reading", raft.Log{Index: 9, Term: 9, Type: raft.LogBarrier, AppendedAt: time.Now()}},
	{"empty non-nil data", raft.Log{Index: 5, Term: 1, Data: []byte{}, Extensions: []byte{}}},
	{"large data", raft.Log{Index: 6, Term: 1, Data: bytes.Repeat([]byte("x"), 1<<20)}},
}

func TestLogEncodingRoundTrip(t *testing.T) {
	for _, tc := range lsSampleLogs {
		t.Run(tc.name, func(t *testing.T) {
			enc := encodeLog(nil, &tc.log)
			if max := encodedLogSize(&tc.log); len(enc) > max {
				t.Errorf("encoded %d bytes, encodedLogSize promised at most %d", len(enc), max)
			}
			var got raft.Log
			if err := decodeLog(enc, &got); err != nil {
				t.Fatalf("decodeLog: %v", err)
			}
			if !lsLogsEqual(&got, &tc.log) {
				t.Fatalf("round trip: got %+v, want %+v", got, tc.log)
			}
			// The decoded slices must not alias the input: bbolt's memory is only
			// valid inside its transaction.
			if len(got.Data) > 0 {
				for i := range enc {
					enc[i] = 0xAA
				}
				if !bytes.Equal(got.Data, tc.log.Data) {
					t.Fatal("decoded Data aliases the encoded buffer")
				}
			}
		})
	}
}

func TestLogDecodeCorrupt(t *testing.T) {
	valid := encodeLog(nil, &lsSampleLogs[2].log)
	cases := []struct {
		name string
		in   []byte
		want string // substring of the error
	}{
		{"empty", nil, "version: truncated"},
		{"unknown version", append([]byte{2}, valid[1:]...), "unknown encoding version 2"},
		{"trailing byte", append(append([]byte(nil), valid...), 0), "1 trailing bytes"},
		{"data length beyond input", []byte{1, 1, 1, 0, 0x80, 0x80, 0x04}, "data: length 65536 exceeds"},
		{"huge data length", append([]byte{1, 1, 1, 0}, binary.AppendUvarint(nil, math.MaxUint64)...), "data: length"},
		{"overlong uvarint", []byte{1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}, "index: bad uvarint"},
		{"bad time flag", []byte{1, 1, 1, 0, 0, 0, 7}, "bad appended_at flag 7"},
		{"nanoseconds out of range", append([]byte{1, 1, 1, 0, 0, 0, 1, 0}, binary.AppendUvarint(nil, 1_000_000_000)...), "out of range"},
	}
	// Every strict prefix of a valid record is truncated somewhere.
	for n := 0; n < len(valid); n++ {
		cases = append(cases, struct {
			name string
			in   []byte
			want string
		}{fmt.Sprintf("prefix %d of %d", n, len(valid)), valid[:n], "corrupt log record"})
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := raft.Log{Index: 77}
			got := before
			err := decodeLog(tc.in, &got)
			if err == nil {
				t.Fatalf("decodeLog(%x) = nil error, decoded %+v", tc.in, got)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("decodeLog(%x) error %q, want it to contain %q", tc.in, err, tc.want)
			}
			if !lsLogsEqual(&got, &before) {
				t.Fatalf("failed decode modified the output: %+v", got)
			}
		})
	}
}

func TestLogStoreEmpty(t *testing.T) {
	s := lsOpenTemp(t)
	for name, f := range map[string]func() (uint64, error){"FirstIndex": s.FirstIndex, "LastIndex": s.LastIndex} {
		if got, err := f(); err != nil || got != 0 {
			t.Errorf("%s on empty store = %d, %v; want 0, nil", name, got, err)
		}
	}
	var l raft.Log
	if err := s.GetLog(1, &l); err != raft.ErrLogNotFound {
		t.Errorf("GetLog(1) on empty store = %v, want raft.ErrLogNotFound itself", err)
	}
	if err := s.DeleteRange(1, 100); err != nil {
		t.Errorf("DeleteRange on empty store: %v", err)
	}
	if err := s.StoreLogs(nil); err != nil {
		t.Errorf("StoreLogs(nil): %v", err)
	}
}

func TestLogStoreRoundTrip(t *testing.T) {
	s := lsOpenTemp(t)
	lsStoreRange(t, s, 1, 10)
	single := &raft.Log{Index: 11, Term: 3, Type: raft.LogConfiguration, Data: []byte("cfg"), Extensions: []byte("e")}
	if err := s.StoreLog(single); err != nil {
		t.Fatalf("StoreLog: %v", err)
	}
	// Every sample, stored past the others, must come back identical.
	for i, tc := range lsSampleLogs {
		l := tc.log
		l.Index = 100 + uint64(i)
		if err := s.StoreLog(&l); err != nil {
			t.Fatalf("StoreLog(%s): %v", tc.name, err)
		}
	}

	want := map[uint64]*raft.Log{11: single}
	for i := uint64(1); i <= 10; i++ {
		want[i] = lsLog(i)
	}
	for i, tc := range lsSampleLogs {
		l := tc.log
		l.Index = 100 + uint64(i)
		want[l.Index] = &l
	}
	for idx, w := range want {
		var got raft.Log
		if err := s.GetLog(idx, &got); err != nil {
			t.Fatalf("GetLog(%d): %v", idx, err)
		}
		if !lsLogsEqual(&got, w) {
			t.Errorf("GetLog(%d) = %+v, want %+v", idx, got, *w)
		}
	}
	if first, err := s.FirstIndex(); err != nil || first != 1 {
		t.Errorf("FirstIndex = %d, %v; want 1", first, err)
	}
	wantLast := 100 + uint64(len(lsSampleLogs)) - 1
	if last, err := s.LastIndex(); err != nil || last != wantLast {
		t.Errorf("LastIndex = %d, %v; want %d", last, err, wantLast)
	}
	var l raft.Log
	if err := s.GetLog(50, &l); err != raft.ErrLogNotFound {
		t.Errorf("GetLog(50) in a gap = %v, want raft.ErrLogNotFound", err)
	}
	// Overwriting an index (a follower truncating a conflicting suffix) replaces it.
	over := &raft.Log{Index: 5, Term: 99, Data: []byte("new")}
	if err := s.StoreLog(over); err != nil {
		t.Fatalf("StoreLog overwrite: %v", err)
	}
	if err := s.GetLog(5, &l); err != nil || !lsLogsEqual(&l, over) {
		t.Errorf("after overwrite GetLog(5) = %+v, %v; want %+v", l, err, *over)
	}
}

func TestLogStoreDeleteRange(t *testing.T) {
	cases := []struct {
		name        string
		min, max    uint64
		first, last uint64   // expected FirstIndex/LastIndex afterwards
		gone        []uint64 // indexes that must be missing
		kept        []uint64 // indexes that must remain
	}{
		{"everything", 1, 10, 0, 0, []uint64{1, 5, 10}, nil},
		{"head", 1, 3, 4, 10, []uint64{1, 2, 3}, []uint64{4, 10}},
		{"tail", 8, 10, 1, 7, []uint64{8, 9, 10}, []uint64{1, 7}},
		{"middle", 4, 6, 1, 10, []uint64{4, 5, 6}, []uint64{1, 3, 7, 10}},
		{"single", 5, 5, 1, 10, []uint64{5}, []uint64{4, 6}},
		{"first only", 1, 1, 2, 10, []uint64{1}, []uint64{2}},
		{"last only", 10, 10, 1, 9, []uint64{10}, []uint64{9}},
		{"below the log", 0, 0, 1, 10, nil, []uint64{1, 10}},
		{"beyond the log", 11, 20, 1, 10, nil, []uint64{1, 10}},
		{"overlapping the head", 0, 2, 3, 10, []uint64{1, 2}, []uint64{3}},
		{"overlapping the tail", 9, math.MaxUint64, 1, 8, []uint64{9, 10}, []uint64{8}},
		{"whole key space", 0, math.MaxUint64, 0, 0, []uint64{1, 10}, nil},
		{"min above max is a no-op", 7, 3, 1, 10, nil, []uint64{3, 5, 7}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := lsOpenTemp(t)
			lsStoreRange(t, s, 1, 10)
			if err := s.DeleteRange(tc.min, tc.max); err != nil {
				t.Fatalf("DeleteRange(%d, %d): %v", tc.min, tc.max, err)
			}
			if first, err := s.FirstIndex(); err != nil || first != tc.first {
				t.Errorf("FirstIndex = %d, %v; want %d", first, err, tc.first)
			}
			if last, err := s.LastIndex(); err != nil || last != tc.last {
				t.Errorf("LastIndex = %d, %v; want %d", last, err, tc.last)
			}
			var l raft.Log
			for _, i := range tc.gone {
				if err := s.GetLog(i, &l); err != raft.ErrLogNotFound {
					t.Errorf("GetLog(%d) = %v, want raft.ErrLogNotFound", i, err)
				}
			}
			for _, i := range tc.kept {
				if err := s.GetLog(i, &l); err != nil || !lsLogsEqual(&l, lsLog(i)) {
					t.Errorf("GetLog(%d) = %+v, %v; want %+v", i, l, err, *lsLog(i))
				}
			}
		})
	}
}

func TestLogStoreDeleteRangeLarge(t *testing.T) {
	// Enough entries to span many bbolt pages, so deletion crosses page boundaries.
	s := lsOpenTemp(t)
	lsStoreRange(t, s, 1, 5000)
	if err := s.DeleteRange(1, 4990); err != nil {
		t.Fatalf("DeleteRange: %v", err)
	}
	var remaining []uint64
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(lsBucketLogs).ForEach(func(k, _ []byte) error {
			remaining = append(remaining, binary.BigEndian.Uint64(k))
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []uint64{4991, 4992, 4993, 4994, 4995, 4996, 4997, 4998, 4999, 5000}
	if fmt.Sprint(remaining) != fmt.Sprint(want) {
		t.Fatalf("remaining keys %v, want %v", remaining, want)
	}
}

func TestStableStore(t *testing.T) {
	s := lsOpenTemp(t)
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
			if err != nil || got == nil || !bytes.Equal(got, tc.val) {
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
	// Stable keys and log indexes live in separate buckets.
	if last, err := s.LastIndex(); err != nil || last != 0 {
		t.Errorf("LastIndex after stable writes = %d, %v; want 0", last, err)
	}
}

func TestLogStoreReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "raft.db")
	s := lsOpen(t, path)
	lsStoreRange(t, s, 1, 100)
	if err := s.DeleteRange(1, 20); err != nil {
		t.Fatal(err)
	}
	if err := s.SetUint64([]byte("CurrentTerm"), 12); err != nil {
		t.Fatal(err)
	}
	if err := s.Set([]byte("LastVoteCand"), []byte("n1")); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}

	s = lsOpen(t, path)
	t.Cleanup(func() { _ = s.Close() })
	if first, err := s.FirstIndex(); err != nil || first != 21 {
		t.Errorf("FirstIndex after reopen = %d, %v; want 21", first, err)
	}
	if last, err := s.LastIndex(); err != nil || last != 100 {
		t.Errorf("LastIndex after reopen = %d, %v; want 100", last, err)
	}
	for i := uint64(21); i <= 100; i++ {
		var l raft.Log
		if err := s.GetLog(i, &l); err != nil || !lsLogsEqual(&l, lsLog(i)) {
			t.Fatalf("GetLog(%d) after reopen = %+v, %v; want %+v", i, l, err, *lsLog(i))
		}
	}
	if v, err := s.GetUint64([]byte("CurrentTerm")); err != nil || v != 12 {
		t.Errorf("GetUint64(CurrentTerm) after reopen = %d, %v; want 12", v, err)
	}
	if v, err := s.Get([]byte("LastVoteCand")); err != nil || string(v) != "n1" {
		t.Errorf("Get(LastVoteCand) after reopen = %q, %v; want n1", v, err)
	}
}

func TestLogStoreCorruptRecord(t *testing.T) {
	cases := []struct {
		name string
		val  []byte
		want string
	}{
		{"garbage", []byte("definitely not a log"), "corrupt log record"},
		{"truncated", encodeLog(nil, lsLog(3))[:5], "corrupt log record"},
		{"record of another index", encodeLog(nil, lsLog(4)), "record holds index 4"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := lsOpenTemp(t)
			err := s.db.Update(func(tx *bolt.Tx) error {
				return tx.Bucket(lsBucketLogs).Put(lsKey(3), tc.val)
			})
			if err != nil {
				t.Fatal(err)
			}
			var l raft.Log
			err = s.GetLog(3, &l)
			if err == nil || errors.Is(err, raft.ErrLogNotFound) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("GetLog of a corrupt record = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestLogStoreLockedByAnother(t *testing.T) {
	path := filepath.Join(t.TempDir(), "raft.db")
	s := lsOpen(t, path)
	t.Cleanup(func() { _ = s.Close() })
	// bbolt's flock is per open file, so a second open in this process is refused like
	// one from another process would be; a short timeout keeps the test fast.
	second, err := openLogStore(path, 50*time.Millisecond)
	if err == nil {
		_ = second.Close()
		t.Fatal("second open of a locked store succeeded")
	}
	if !errors.Is(err, berrors.ErrTimeout) || !strings.Contains(err.Error(), "locked by another process") {
		t.Fatalf("second open error = %v, want a bolt.ErrTimeout saying the file is locked", err)
	}
}

// lsCountingFSM records which payloads it applied. Payloads are unique per test, so a
// command retried after a leadership change is counted once.
type lsCountingFSM struct {
	mu   sync.Mutex
	seen map[uint64]bool
}

func newLSCountingFSM() *lsCountingFSM { return &lsCountingFSM{seen: map[uint64]bool{}} }

func (f *lsCountingFSM) Apply(l *raft.Log) interface{} {
	if len(l.Data) != 8 {
		return fmt.Errorf("payload of %d bytes", len(l.Data))
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.seen[binary.BigEndian.Uint64(l.Data)] = true
	return len(f.seen)
}

func (f *lsCountingFSM) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var buf []byte
	for v := range f.seen {
		buf = binary.BigEndian.AppendUint64(buf, v)
	}
	return lsCountingSnapshot(buf), nil
}

func (f *lsCountingFSM) Restore(rc io.ReadCloser) error {
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
func (f *lsCountingFSM) missing(n uint64) ([]uint64, int) {
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

type lsCountingSnapshot []byte

func (s lsCountingSnapshot) Persist(sink raft.SnapshotSink) error {
	if _, err := sink.Write(s); err != nil {
		_ = sink.Cancel()
		return err
	}
	return sink.Close()
}

func (lsCountingSnapshot) Release() {}

// lsLockedBuffer collects the raft logs of a test; they are printed only if it fails.
type lsLockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lsLockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lsLockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// lsRaftNode is one member of the in-process test cluster.
type lsRaftNode struct {
	id    raft.ServerID
	addr  raft.ServerAddress
	dir   string
	store *LogStore
	fsm   *lsCountingFSM
	trans *raft.InmemTransport
	raft  *raft.Raft
}

// lsWaitFor polls cond until it holds or the deadline passes; on failure it reports what
// cond last saw.
func lsWaitFor(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) {
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

func TestRaftClusterOnLogStore(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a 3-node raft cluster")
	}
	logs := &lsLockedBuffer{}
	t.Cleanup(func() {
		if t.Failed() {
			out := logs.String()
			if len(out) > 64<<10 {
				out = "...\n" + out[len(out)-64<<10:]
			}
			t.Logf("raft logs:\n%s", out)
		}
	})

	nodes := make([]*lsRaftNode, 3)
	for i := range nodes {
		id := raft.ServerID(fmt.Sprintf("n%d", i))
		nodes[i] = &lsRaftNode{id: id, addr: raft.ServerAddress(id), dir: t.TempDir()}
	}
	connect := func(n *lsRaftNode) {
		for _, o := range nodes {
			if o != n && o.trans != nil {
				n.trans.Connect(o.addr, o.trans)
				o.trans.Connect(n.addr, n.trans)
			}
		}
	}
	start := func(n *lsRaftNode) {
		t.Helper()
		n.store = lsOpen(t, filepath.Join(n.dir, "raft.db"))
		snaps, err := raft.NewFileSnapshotStoreWithLogger(n.dir, 2, hclog.NewNullLogger())
		if err != nil {
			t.Fatalf("snapshot store: %v", err)
		}
		_, n.trans = raft.NewInmemTransport(n.addr)
		connect(n)
		n.fsm = newLSCountingFSM()
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
	stop := func(n *lsRaftNode) {
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

	leader := func() *lsRaftNode {
		t.Helper()
		var found *lsRaftNode
		lsWaitFor(t, 10*time.Second, "a leader", func() (bool, string) {
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
	waitApplied := func(n *lsRaftNode, count uint64) {
		t.Helper()
		lsWaitFor(t, 20*time.Second, fmt.Sprintf("%s to apply %d payloads", n.id, count), func() (bool, string) {
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
	var f *lsRaftNode
	for _, n := range nodes {
		if n != l {
			f = n
			break
		}
	}
	stop(f)
	stopped := lsOpen(t, filepath.Join(f.dir, "raft.db"))
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
	lsWaitFor(t, 10*time.Second, fmt.Sprintf("%s's log store to reach index %d", f.id, lastIndex), func() (bool, string) {
		last, err := f.store.LastIndex()
		return err == nil && last >= lastIndex, fmt.Sprintf("last index %d, err %v (was %d before the restart)", last, err, lastBefore)
	})
	// Raft compacted the leader's log through our DeleteRange.
	lsWaitFor(t, 10*time.Second, "the leader to compact its log", func() (bool, string) {
		ld := leader()
		first, err := ld.store.FirstIndex()
		return err == nil && first > 1, fmt.Sprintf("%s first index %d, err %v", ld.id, first, err)
	})
	// Every index all members still hold is identical everywhere, and the last batch is
	// held by all of them.
	lsWaitFor(t, 10*time.Second, "identical logs on all members", func() (bool, string) {
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
}

func FuzzDecodeLog(f *testing.F) {
	for _, tc := range lsSampleLogs {
		if len(tc.log.Data) > 1<<10 {
			continue
		}
		enc := encodeLog(nil, &tc.log)
		f.Add(enc)
		f.Add(enc[:len(enc)/2])
	}
	f.Add([]byte{})
	f.Add([]byte{1, 1, 1, 0, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Fuzz(func(t *testing.T, b []byte) {
		var l raft.Log
		if err := decodeLog(b, &l); err != nil {
			return
		}
		// Whatever decodes must survive another round trip unchanged.
		var again raft.Log
		if err := decodeLog(encodeLog(nil, &l), &again); err != nil {
			t.Fatalf("re-encoded record does not decode: %v (first decode %+v)", err, l)
		}
		if !lsLogsEqual(&l, &again) {
			t.Fatalf("round trip changed the record: %+v then %+v", l, again)
		}
	})
}

func BenchmarkStoreLogs(b *testing.B) {
	for _, batch := range []int{1, 64} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			s := lsOpenTemp(b)
			payload := bytes.Repeat([]byte("c"), 256)
			logs := make([]*raft.Log, batch)
			next := uint64(1)
			b.SetBytes(int64(batch * len(payload)))
			for b.Loop() {
				for i := range logs {
					logs[i] = &raft.Log{Index: next, Term: 1, Type: raft.LogCommand, Data: payload, AppendedAt: time.Now()}
					next++
				}
				if err := s.StoreLogs(logs); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(next-1)/b.Elapsed().Seconds(), "entries/s")
		})
	}
}

// TestLogStoreReusesFreedPagesAfterReopen: the freelist is not synced
// (NoFreelistSync), so bbolt rebuilds it at open; pages freed by log
// compaction before a close are reused after it (the file does not grow
// by the entries written again), and every entry reads back. A file
// written with a synced freelist (an older chime) opens as well.
func TestLogStoreReusesFreedPagesAfterReopen(t *testing.T) {
	for _, synced := range []bool{false, true} {
		t.Run(fmt.Sprintf("synced-freelist=%v", synced), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "raft.db")
			if synced {
				db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
				if err != nil {
					t.Fatal(err)
				}
				_ = db.Close()
			}
			big := func(i uint64) *raft.Log {
				return &raft.Log{Index: i, Term: 1, Type: raft.LogCommand, Data: bytes.Repeat([]byte{byte(i)}, 2048)}
			}
			s := lsOpen(t, path)
			if !s.db.NoFreelistSync || s.db.FreelistType != bolt.FreelistMapType {
				t.Fatalf("log store options: NoFreelistSync %v, FreelistType %q", s.db.NoFreelistSync, s.db.FreelistType)
			}
			var batch []*raft.Log
			for i := uint64(1); i <= 2000; i++ {
				batch = append(batch, big(i))
			}
			if err := s.StoreLogs(batch); err != nil {
				t.Fatal(err)
			}
			if err := s.DeleteRange(1, 1900); err != nil {
				t.Fatal(err)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			before := fileSize(t, path)
			s = lsOpen(t, path)
			t.Cleanup(func() { _ = s.Close() })
			batch = nil
			for i := uint64(2001); i <= 3800; i++ {
				batch = append(batch, big(i))
			}
			if err := s.StoreLogs(batch); err != nil {
				t.Fatal(err)
			}
			after := fileSize(t, path)
			t.Logf("file %d KiB after compaction, %d KiB after as many entries again", before>>10, after>>10)
			if after > before+before/4 {
				t.Errorf("file grew from %d to %d bytes: the pages freed before the reopen were not reused", before, after)
			}
			for i := uint64(1901); i <= 3800; i++ {
				var l raft.Log
				if err := s.GetLog(i, &l); err != nil || !lsLogsEqual(&l, big(i)) {
					t.Fatalf("GetLog(%d) = %v", i, err)
				}
			}
		})
	}
}

func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Size()
}
