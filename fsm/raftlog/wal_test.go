package raftlog

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// testLog is the entry the tests store at index i.
func testLog(i uint64) *raft.Log {
	return &raft.Log{
		Index:      i,
		Term:       i/10 + 1,
		Type:       raft.LogCommand,
		Data:       []byte(fmt.Sprintf("entry-%d", i)),
		AppendedAt: time.Unix(1_700_000_000+int64(i), int64(i)),
	}
}

func openTestWAL(t testing.TB, dir string, opts WALOptions) *WAL {
	t.Helper()
	w, err := OpenWAL(dir, opts)
	if err != nil {
		t.Fatalf("OpenWAL(%s): %v", dir, err)
	}
	t.Cleanup(func() { _ = w.Close() })
	return w
}

// storeRange stores first..last in batches of batch entries and fails the test on error.
func storeRange(t testing.TB, s raft.LogStore, first, last uint64, batch int) {
	t.Helper()
	var logs []*raft.Log
	for i := first; i <= last; i++ {
		logs = append(logs, testLog(i))
		if len(logs) == batch || i == last {
			if err := s.StoreLogs(logs); err != nil {
				t.Fatalf("StoreLogs(%d..%d): %v", logs[0].Index, i, err)
			}
			logs = nil
		}
	}
}

// checkLog asserts FirstIndex and LastIndex, that every index between reads back as testLog
// and that the indexes just outside are not found.
func checkLog(t testing.TB, s raft.LogStore, first, last uint64) {
	t.Helper()
	if got, err := s.FirstIndex(); err != nil || got != first {
		t.Errorf("FirstIndex = %d, %v; want %d", got, err, first)
	}
	if got, err := s.LastIndex(); err != nil || got != last {
		t.Errorf("LastIndex = %d, %v; want %d", got, err, last)
	}
	var l raft.Log
	if first > 0 {
		for i := first; i <= last; i++ {
			if err := s.GetLog(i, &l); err != nil || !logsEqual(&l, testLog(i)) {
				t.Fatalf("GetLog(%d) = %+v, %v; want %+v", i, l, err, *testLog(i))
			}
		}
	}
	for _, i := range []uint64{0, first - 1, last + 1} {
		if first > 0 && i >= first && i <= last {
			continue
		}
		if err := s.GetLog(i, &l); err != raft.ErrLogNotFound {
			t.Errorf("GetLog(%d) outside %d..%d = %v, want raft.ErrLogNotFound itself", i, first, last, err)
		}
	}
}

func segmentFiles(t testing.TB, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, "*"+segmentExt))
	if err != nil {
		t.Fatal(err)
	}
	for i := range m {
		m[i] = filepath.Base(m[i])
	}
	return m
}

func TestWALEmpty(t *testing.T) {
	w := openTestWAL(t, t.TempDir(), WALOptions{})
	checkLog(t, w, 0, 0)
	if err := w.DeleteRange(1, 100); err != nil {
		t.Errorf("DeleteRange on an empty log: %v", err)
	}
	if err := w.StoreLogs(nil); err != nil {
		t.Errorf("StoreLogs(nil): %v", err)
	}
	if !w.IsMonotonic() {
		t.Error("IsMonotonic = false")
	}
}

func TestWALRoundTrip(t *testing.T) {
	for _, grow := range []int64{-1, 0, 100} {
		t.Run(fmt.Sprintf("grow=%d", grow), func(t *testing.T) {
			dir := t.TempDir()
			w := openTestWAL(t, dir, WALOptions{GrowStep: grow})
			storeRange(t, w, 1, 10, 3)
			single := &raft.Log{Index: 11, Term: 3, Type: raft.LogConfiguration, Data: []byte("cfg"), Extensions: []byte("e")}
			if err := w.StoreLog(single); err != nil {
				t.Fatalf("StoreLog: %v", err)
			}
			// Every sample, stored after the others, must come back identical, before
			// and after a reopen.
			want := map[uint64]*raft.Log{11: single}
			for i := uint64(1); i <= 10; i++ {
				want[i] = testLog(i)
			}
			for i, tc := range sampleLogs {
				l := tc.log
				l.Index = 12 + uint64(i)
				if err := w.StoreLog(&l); err != nil {
					t.Fatalf("StoreLog(%s): %v", tc.name, err)
				}
				want[l.Index] = &l
			}
			lastIdx := 11 + uint64(len(sampleLogs))
			for round := 0; round < 2; round++ {
				for idx, wl := range want {
					var got raft.Log
					if err := w.GetLog(idx, &got); err != nil {
						t.Fatalf("round %d: GetLog(%d): %v", round, idx, err)
					}
					if !logsEqual(&got, wl) {
						t.Errorf("round %d: GetLog(%d) = %+v, want %+v", round, idx, got, *wl)
					}
				}
				if first, _ := w.FirstIndex(); first != 1 {
					t.Errorf("round %d: FirstIndex = %d, want 1", round, first)
				}
				if last, _ := w.LastIndex(); last != lastIdx {
					t.Errorf("round %d: LastIndex = %d, want %d", round, last, lastIdx)
				}
				if err := w.Close(); err != nil {
					t.Fatalf("Close: %v", err)
				}
				w = openTestWAL(t, dir, WALOptions{GrowStep: grow})
			}
		})
	}
}

func TestWALRefusesNonContiguous(t *testing.T) {
	cases := []struct {
		name  string
		batch []uint64
		want  string
	}{
		{"gap after the last", []uint64{12}, "does not follow the last stored 10"},
		{"overwrite", []uint64{10}, "does not follow the last stored 10"},
		{"gap inside the batch", []uint64{11, 13}, "not contiguous"},
		{"index 0", []uint64{0}, "index 0"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w := openTestWAL(t, t.TempDir(), WALOptions{})
			storeRange(t, w, 1, 10, 10)
			var logs []*raft.Log
			for _, i := range tc.batch {
				logs = append(logs, testLog(i))
			}
			if err := w.StoreLogs(logs); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("StoreLogs(%v) = %v, want an error containing %q", tc.batch, err, tc.want)
			}
			checkLog(t, w, 1, 10) // nothing of the refused batch was stored
			storeRange(t, w, 11, 11, 1)
		})
	}
}

func TestWALDeleteRange(t *testing.T) {
	cases := []struct {
		name        string
		min, max    uint64
		first, last uint64 // expected afterwards; 0, 0: empty
		err         string // substring of the error, if refused
	}{
		{"everything", 1, 100, 0, 0, ""},
		{"whole key space", 0, math.MaxUint64, 0, 0, ""},
		{"head within the first segment", 1, 3, 4, 100, ""},
		{"head up to a segment's end", 1, 20, 21, 100, ""},
		{"head across segments", 1, 55, 56, 100, ""},
		{"head overlapping below", 0, 42, 43, 100, ""},
		{"head leaving one", 1, 99, 100, 100, ""},
		{"tail within the last segment", 95, 100, 1, 94, ""},
		{"tail at a segment's start", 81, 100, 1, 80, ""},
		{"tail across segments", 33, 100, 1, 32, ""},
		{"tail overlapping above", 50, math.MaxUint64, 1, 49, ""},
		{"tail leaving one", 2, 100, 1, 1, ""},
		{"below the log", 0, 0, 1, 100, ""},
		{"beyond the log", 101, 200, 1, 100, ""},
		{"min above max", 70, 30, 1, 100, ""},
		{"middle", 40, 60, 1, 100, "only a prefix or a suffix"},
		{"single in the middle", 5, 5, 1, 100, "only a prefix or a suffix"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			// A segment per batch: 1-20, 21-40, 41-60, 61-80, 81-100.
			opts := WALOptions{SegmentSize: 1}
			w := openTestWAL(t, dir, opts)
			storeRange(t, w, 1, 100, 20)
			if n := len(segmentFiles(t, dir)); n != 5 {
				t.Fatalf("%d segments, want 5 for this test", n)
			}
			err := w.DeleteRange(tc.min, tc.max)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("DeleteRange(%d, %d) = %v, want an error containing %q", tc.min, tc.max, err, tc.err)
				}
			} else if err != nil {
				t.Fatalf("DeleteRange(%d, %d): %v", tc.min, tc.max, err)
			}
			checkLog(t, w, tc.first, tc.last)
			// Durable: the same after a reopen, and appends continue from there.
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			w = openTestWAL(t, dir, opts)
			checkLog(t, w, tc.first, tc.last)
			next := tc.last + 1
			if tc.last == 0 {
				next = 1 // an emptied log restarts anywhere, even below what it held
			}
			storeRange(t, w, next, next+30, 7)
			first := tc.first
			if first == 0 {
				first = next
			}
			checkLog(t, w, first, next+30)
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			w = openTestWAL(t, dir, opts)
			checkLog(t, w, first, next+30)
		})
	}
}

// TestWALSegments: appends rotate to new segment files named by their first index; head
// compaction removes the segments it leaves without a live record and keeps the rest.
func TestWALSegments(t *testing.T) {
	dir := t.TempDir()
	// Every batch of 100 records fills a segment: records are at least rec1 long.
	rec1 := int64(frameHeaderSize + len(encodeLog(nil, testLog(1))))
	rec := int64(frameHeaderSize + len(encodeLog(nil, testLog(1000))))
	opts := WALOptions{SegmentSize: 100 * rec1}
	w := openTestWAL(t, dir, opts)
	storeRange(t, w, 1, 1000, 100)
	segs := segmentFiles(t, dir)
	if len(segs) != 10 || segs[0] != segmentName(1) || segs[1] != segmentName(101) {
		t.Fatalf("segments %v, want 10 starting %s, %s", segs, segmentName(1), segmentName(101))
	}
	// A sealed segment holds its records and nothing more.
	if st, err := os.Stat(filepath.Join(dir, segs[0])); err != nil || st.Size() > 100*rec+rec {
		t.Errorf("sealed segment %s: %v, size %d; want at most %d", segs[0], err, st.Size(), 100*rec+rec)
	}
	if err := w.DeleteRange(1, 250); err != nil {
		t.Fatal(err)
	}
	if segs := segmentFiles(t, dir); len(segs) != 8 || segs[0] != segmentName(201) {
		t.Fatalf("segments after compaction to 250: %v, want 8 from %s", segs, segmentName(201))
	}
	checkLog(t, w, 251, 1000)
	if err := w.DeleteRange(851, 1000); err != nil {
		t.Fatal(err)
	}
	if segs := segmentFiles(t, dir); len(segs) != 7 || segs[6] != segmentName(801) {
		t.Fatalf("segments after truncating 851..1000: %v, want 7 up to %s", segs, segmentName(801))
	}
	storeRange(t, w, 851, 880, 10) // appends to the segment of 801 again: it is not full
	if segs := segmentFiles(t, dir); len(segs) != 7 {
		t.Errorf("segments after appending 851..880: %v, want the same 7", segs)
	}
	checkLog(t, w, 251, 880)
	_ = w.Close()
	w = openTestWAL(t, dir, opts)
	checkLog(t, w, 251, 880)
}

// TestWALRecovery: what a crash can leave at the end of the last segment is cut off at
// open; anything else that does not read back is refused with the file and offset.
func TestWALRecovery(t *testing.T) {
	rec := int64(frameHeaderSize + len(encodeLog(nil, testLog(5))))
	cases := []struct {
		name   string
		damage func(t *testing.T, seg string) // damages the segment file holding 1..10
		sealed bool                           // 11..20 follow in a second segment
		last   uint64                         // expected LastIndex, if opened
		err    string                         // substring of the open error, if refused
	}{
		{"clean", func(*testing.T, string) {}, false, 10, ""},
		{"partial header at the end", func(t *testing.T, seg string) { appendBytes(t, seg, []byte{9, 0, 0}) }, false, 10, ""},
		{"partial record at the end", func(t *testing.T, seg string) {
			f, _ := appendFrame(nil, testLog(11))
			appendBytes(t, seg, f[:len(f)-3])
		}, false, 10, ""},
		{"last record cut short", func(t *testing.T, seg string) { truncateTo(t, seg, 10*rec-2) }, false, 9, ""},
		{"unwritten sector in the last record", func(t *testing.T, seg string) {
			big, _ := appendFrame(nil, &raft.Log{Index: 11, Data: bytes.Repeat([]byte{7}, 4*sectorSize)})
			// Two sectors' worth of zeros hold one whole aligned sector the disk never wrote.
			copy(big[frameHeaderSize+sectorSize:], make([]byte, 2*sectorSize))
			appendBytes(t, seg, big)
		}, false, 10, ""},
		{"zero length after the end", func(t *testing.T, seg string) {
			appendBytes(t, seg, []byte{0, 0, 0, 0, 1, 2, 3, 4})
		}, false, 10, ""},
		{"later writes landed, an earlier one did not", func(t *testing.T, seg string) {
			f, _ := appendFrame(nil, testLog(12))
			appendBytes(t, seg, append(make([]byte, rec), f...))
		}, false, 10, ""},
		{"bit flip in the middle", func(t *testing.T, seg string) { flipByte(t, seg, 3*rec+frameHeaderSize+2) }, false, 0, "offset " + fmt.Sprint(3*rec) + ": checksum mismatch"},
		{"bit flip in the last record", func(t *testing.T, seg string) { flipByte(t, seg, 9*rec+frameHeaderSize+2) }, false, 0, "offset " + fmt.Sprint(9*rec) + ": checksum mismatch"},
		{"huge length in the middle", func(t *testing.T, seg string) { writeAt(t, seg, 2*rec, []byte{0xff, 0xff, 0xff, 0xff}) }, false, 0, "bad record length"},
		{"bit flip in a sealed segment", func(t *testing.T, seg string) { flipByte(t, seg, 5*rec+3) }, true, 0, "in a sealed segment"},
		{"sealed segment cut short", func(t *testing.T, seg string) { truncateTo(t, seg, 10*rec-1) }, true, 0, "truncated record in a sealed segment"},
		{"sealed segment missing", func(t *testing.T, seg string) {
			if err := os.Remove(seg); err != nil {
				t.Fatal(err)
			}
		}, true, 20, ""}, // 11..20 alone are a valid log
		{"record of another index", func(t *testing.T, seg string) {
			f, _ := appendFrame(nil, testLog(33))
			writeAt(t, seg, 4*rec, f)
		}, false, 0, "record holds index 33, want 5"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			opts := WALOptions{GrowStep: -1, SegmentSize: 10 * rec}
			w, err := OpenWAL(dir, opts)
			if err != nil {
				t.Fatal(err)
			}
			storeRange(t, w, 1, 10, 5)
			if tc.sealed {
				storeRange(t, w, 11, 20, 5)
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			seg := filepath.Join(dir, segmentName(1))
			tc.damage(t, seg)
			w, err = OpenWAL(dir, opts)
			if tc.err != "" {
				if err == nil {
					_ = w.Close()
					t.Fatalf("OpenWAL of a corrupt log succeeded")
				}
				if !strings.Contains(err.Error(), tc.err) || !strings.Contains(err.Error(), seg) {
					t.Fatalf("OpenWAL error %q, want it to name %s and contain %q", err, seg, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatalf("OpenWAL: %v", err)
			}
			t.Cleanup(func() { _ = w.Close() })
			first := uint64(1)
			if tc.name == "sealed segment missing" {
				first = 11
			}
			checkLog(t, w, first, tc.last)
			// The torn bytes are gone: appending and reopening reads the new records.
			storeRange(t, w, tc.last+1, tc.last+5, 2)
			_ = w.Close()
			w = openTestWAL(t, dir, opts)
			checkLog(t, w, first, tc.last+5)
		})
	}
}

func appendBytes(t *testing.T, path string, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(b); err != nil {
		t.Fatal(err)
	}
}

func writeAt(t *testing.T, path string, off int64, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

func flipByte(t *testing.T, path string, off int64) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	writeAt(t, path, off, []byte{b[off] ^ 0x10})
}

func truncateTo(t *testing.T, path string, size int64) {
	t.Helper()
	if err := os.Truncate(path, size); err != nil {
		t.Fatal(err)
	}
}

// TestWALCompactionInterrupted: a crash after the new first index reached dir/meta but
// before the segments below it were removed: open finishes the removal.
func TestWALCompactionInterrupted(t *testing.T) {
	dir := t.TempDir()
	rec := int64(frameHeaderSize + len(encodeLog(nil, testLog(5))))
	opts := WALOptions{SegmentSize: 10 * rec}
	w := openTestWAL(t, dir, opts)
	storeRange(t, w, 1, 40, 10)
	// What deleteHead does first, without what it does next.
	if err := w.writeMeta(26); err != nil {
		t.Fatal(err)
	}
	_ = w.Close()
	w = openTestWAL(t, dir, opts)
	checkLog(t, w, 26, 40)
	if segs := segmentFiles(t, dir); len(segs) != 2 || segs[0] != segmentName(21) {
		t.Errorf("segments %v, want 2 from %s", segs, segmentName(21))
	}
}

func TestWALLocked(t *testing.T) {
	dir := t.TempDir()
	openTestWAL(t, dir, WALOptions{})
	start := time.Now()
	second, err := OpenWAL(dir, WALOptions{})
	if err == nil {
		_ = second.Close()
		t.Fatal("second open of a locked WAL succeeded")
	}
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "another chime server") {
		t.Fatalf("second open = %v, want ErrLocked saying another server may use the dir", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("second open took %v", d)
	}
}

// TestWALConcurrentReads: GetLog from several goroutines while StoreLogs appends (with
// rotation) and DeleteRange compacts: every read of an index that was stored and not yet
// compacted returns its entry. Run with -race to check the locking too.
func TestWALConcurrentReads(t *testing.T) {
	rec := int64(frameHeaderSize + len(encodeLog(nil, testLog(5000))))
	w := openTestWAL(t, t.TempDir(), WALOptions{SegmentSize: 200 * rec, GrowStep: 64 * rec})
	const total = 3000
	var stored atomic.Uint64
	var errs = make(chan error, 8)
	var wg sync.WaitGroup
	done := make(chan struct{})
	for r := 0; r < 4; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var reads int
			for {
				select {
				case <-done:
					if reads == 0 {
						errs <- errors.New("reader did not read anything")
					}
					return
				default:
				}
				last := stored.Load()
				if last == 0 {
					continue
				}
				first, _ := w.FirstIndex()
				from := max(first, 1)
				if last > 50 {
					from = max(first, last-50)
				}
				for i := from; i <= last; i++ {
					var l raft.Log
					err := w.GetLog(i, &l)
					if err == raft.ErrLogNotFound {
						if f, _ := w.FirstIndex(); f > i {
							continue // compacted meanwhile
						}
					}
					if err != nil || !logsEqual(&l, testLog(i)) {
						errs <- fmt.Errorf("GetLog(%d) with %d stored = %+v, %v", i, last, l, err)
						return
					}
					reads++
				}
			}
		}()
	}
	for i := uint64(1); i <= total; i += 10 {
		storeRange(t, w, i, i+9, 10)
		stored.Store(i + 9)
		if i%500 == 1 && i > 500 {
			if err := w.DeleteRange(1, i-300); err != nil {
				t.Fatal(err)
			}
		}
	}
	close(done)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestWALStoreAfterFailureRefused: once a write failed, the WAL refuses every write.
func TestWALStoreAfterFailureRefused(t *testing.T) {
	w := openTestWAL(t, t.TempDir(), WALOptions{})
	storeRange(t, w, 1, 5, 5)
	// Close the active segment's file behind the WAL's back: the next write fails.
	_ = w.segs[len(w.segs)-1].f.Close()
	if err := w.StoreLogs([]*raft.Log{testLog(6)}); err == nil {
		t.Fatal("StoreLogs on a closed file succeeded")
	}
	err := w.StoreLogs([]*raft.Log{testLog(6)})
	if err == nil || !strings.Contains(err.Error(), "an earlier write failed") {
		t.Fatalf("StoreLogs after a failure = %v, want it refused", err)
	}
	if last, _ := w.LastIndex(); last != 5 {
		t.Errorf("LastIndex = %d after failed appends, want 5", last)
	}
}

func FuzzScanSegment(f *testing.F) {
	var seg []byte
	for i := uint64(1); i <= 4; i++ {
		seg, _ = appendFrame(seg, testLog(i))
	}
	f.Add(seg, true)
	f.Add(seg[:len(seg)-5], true)
	f.Add(seg[:len(seg)-5], false)
	f.Add(append(append([]byte(nil), seg...), make([]byte, 64)...), false)
	f.Add([]byte{}, true)
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0}, true)
	f.Fuzz(func(t *testing.T, b []byte, last bool) {
		sc, err := scanSegment(b, 1, last)
		if err != nil {
			return
		}
		if sc.end > int64(len(b)) || (sc.torn && !last) {
			t.Fatalf("scan of %d bytes: end %d, torn %v, last %v", len(b), sc.end, sc.torn, last)
		}
		// What scanned as records reads back record by record, and the bytes up to end
		// scan the same as a sealed segment.
		for i, off := range sc.offs {
			payload, _, st := readFrame(b[off:])
			var l raft.Log
			if st != frameOK || decodeLog(payload, &l) != nil || l.Index != uint64(i)+1 {
				t.Fatalf("record %d at %d does not read back: status %d", i, off, st)
			}
		}
		again, err := scanSegment(b[:sc.end], 1, false)
		if err != nil || len(again.offs) != len(sc.offs) || again.end != sc.end {
			t.Fatalf("the scanned prefix rescans as %d records to %d (%v), want %d to %d", len(again.offs), again.end, err, len(sc.offs), sc.end)
		}
	})
}

// BenchmarkStoreLogs: appends of 256-byte entries, one fdatasync per batch, with the active
// segment zero-filled ahead (the default) and without (the file grows with each append).
func BenchmarkStoreLogs(b *testing.B) {
	for _, grow := range []int64{DefaultGrowStep, -1} {
		for _, batch := range []int{1, 64} {
			b.Run(fmt.Sprintf("grow=%d/batch=%d", grow, batch), func(b *testing.B) {
				w := openTestWAL(b, b.TempDir(), WALOptions{GrowStep: grow})
				payload := bytes.Repeat([]byte("c"), 256)
				logs := make([]*raft.Log, batch)
				next := uint64(1)
				b.SetBytes(int64(batch * len(payload)))
				for b.Loop() {
					for i := range logs {
						logs[i] = &raft.Log{Index: next, Term: 1, Type: raft.LogCommand, Data: payload, AppendedAt: time.Now()}
						next++
					}
					if err := w.StoreLogs(logs); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(next-1)/b.Elapsed().Seconds(), "entries/s")
			})
		}
	}
}
