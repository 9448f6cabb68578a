package raftlog

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	"golang.org/x/sys/unix"
)

const (
	// DefaultSegmentSize is where the WAL starts a new segment file.
	DefaultSegmentSize = 64 << 20
	// DefaultGrowStep is how far ahead of its records the active segment is zero-filled.
	DefaultGrowStep = 4 << 20

	metaFile = "meta"
	lockFile = "LOCK"
)

// WALOptions tune a WAL; the zero value means the defaults.
type WALOptions struct {
	// SegmentSize: an append that finds the active segment this large starts a new one
	// (default DefaultSegmentSize). A segment exceeds it by at most one batch.
	SegmentSize int64
	// GrowStep: the active segment is extended by writing zeros this far past the records
	// it must hold (default DefaultGrowStep; negative: no zero-fill, the file grows with
	// each append). Appends inside the zero-filled space change no file size or block
	// allocation, so their fdatasync writes the data blocks and no journal commit.
	GrowStep int64
	// Logger gets what recovery at open repaired (default: discarded).
	Logger hclog.Logger
}

func (o WALOptions) withDefaults() WALOptions {
	if o.SegmentSize <= 0 {
		o.SegmentSize = DefaultSegmentSize
	}
	if o.GrowStep == 0 {
		o.GrowStep = DefaultGrowStep
	}
	if o.Logger == nil {
		o.Logger = hclog.NewNullLogger()
	}
	return o
}

// WAL is a raft.LogStore on append-only segment files in one directory. StoreLogs appends
// a batch with one write and one fdatasync; GetLog reads one record with pread, through an
// in-memory index of every record's segment and offset. Only a prefix (log compaction) or a
// suffix (a conflicting tail) can be deleted, and the indexes stored are contiguous: the WAL
// is a raft.MonotonicLogStore. It is safe for concurrent use: reads are not blocked by an
// append's write and fdatasync.
type WAL struct {
	dir  string
	opts WALOptions
	lock *os.File // dir/LOCK, flocked while open

	// writeMu serializes the writers (StoreLogs, DeleteRange, Close). The fields below mu
	// change only with both held, so a writer reads them holding writeMu alone.
	writeMu sync.Mutex
	buf     []byte // the batch being encoded, reused
	failed  error  // a write or sync failed: the file's state is unknown, refuse further writes
	// metaFirst is the first index recorded in dir/meta: records below it are deleted
	// even where a segment still holds them.
	metaFirst uint64

	mu     sync.RWMutex
	segs   []*segment // by base index; the last is the active one
	first  uint64     // 0 when empty
	last   uint64     // 0 when empty
	closed bool
}

// segment is one open segment file.
type segment struct {
	base uint64
	path string
	f    *os.File
	offs []int64 // frame offset of record base+i
	end  int64   // end of the last record
	size int64   // file size: bytes from end to size are zero
}

func (s *segment) lastIndex() uint64 { return s.base + uint64(len(s.offs)) - 1 }

var (
	_ raft.LogStore          = (*WAL)(nil)
	_ raft.MonotonicLogStore = (*WAL)(nil)
)

// ErrLocked is returned by OpenWAL when another process (or another open in this one) holds
// the directory.
var ErrLocked = errors.New("locked by another process")

// OpenWAL opens the WAL in dir, creating the directory (0700) if needed, and recovers it: it
// reads every segment and checks every record's checksum and index, truncates the remains of
// an append interrupted by a crash at the end of the last segment, finishes an interrupted
// compaction, and refuses corruption anywhere else with an error naming the file and offset.
func OpenWAL(dir string, opts WALOptions) (*WAL, error) {
	w := &WAL{dir: dir, opts: opts.withDefaults()}
	if err := w.open(); err != nil {
		w.closeFiles()
		return nil, fmt.Errorf("open raft wal %s: %w", dir, err)
	}
	return w, nil
}

func (w *WAL) open() error {
	if err := mkdirDurable(w.dir); err != nil {
		return err
	}
	lock, err := os.OpenFile(filepath.Join(w.dir, lockFile), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	w.lock = lock
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		if errors.Is(err, unix.EWOULDBLOCK) {
			return fmt.Errorf("%s: %w (is another chime server using this data dir?)", lock.Name(), ErrLocked)
		}
		return fmt.Errorf("lock %s: %w", lock.Name(), err)
	}
	if w.metaFirst, err = readMeta(filepath.Join(w.dir, metaFile)); err != nil {
		return err
	}
	_ = os.Remove(filepath.Join(w.dir, metaFile+".tmp")) // an interrupted writeMeta; meta is intact

	entries, err := os.ReadDir(w.dir)
	if err != nil {
		return err
	}
	var bases []uint64
	for _, e := range entries {
		if base, ok := parseSegmentName(e.Name()); ok && e.Type().IsRegular() {
			bases = append(bases, base)
		}
	}
	slices.Sort(bases)
	removed := false
	for i, base := range bases {
		seg, err := w.openSegment(base, i == len(bases)-1)
		if err != nil {
			return err
		}
		switch {
		case len(seg.offs) == 0 || seg.lastIndex() < w.metaFirst:
			// An empty last segment (a crash right after it was created, or a torn first
			// append), or one wholly compacted away before a crash let it be removed.
			_ = seg.f.Close()
			if err := os.Remove(seg.path); err != nil {
				return err
			}
			removed = true
			w.opts.Logger.Info("removed a segment with no live records", "file", seg.path, "records", len(seg.offs))
			continue
		}
		if n := len(w.segs); n > 0 && w.segs[n-1].lastIndex()+1 != seg.base {
			_ = seg.f.Close()
			return fmt.Errorf("%s: first index %d does not follow %s's last %d: the segments have a gap", seg.path, seg.base, filepath.Base(w.segs[n-1].path), w.segs[n-1].lastIndex())
		}
		w.segs = append(w.segs, seg)
	}
	if removed {
		if err := syncDir(w.dir); err != nil {
			return err
		}
	}
	if n := len(w.segs); n > 0 {
		w.first = max(w.metaFirst, w.segs[0].base)
		w.last = w.segs[n-1].lastIndex()
	}
	return nil
}

// openSegment opens and scans one segment file; active says whether it is the last one.
func (w *WAL) openSegment(base uint64, active bool) (*segment, error) {
	path := filepath.Join(w.dir, segmentName(base))
	f, err := os.OpenFile(path, os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	data, err := os.ReadFile(path)
	if err != nil {
		_ = f.Close()
		return nil, err
	}
	sc, err := scanSegment(data, base, active)
	if err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("corrupt raft wal segment %s: %w", path, err)
	}
	seg := &segment{base: base, path: path, f: f, offs: sc.offs, end: sc.end, size: int64(len(data))}
	if sc.torn {
		w.opts.Logger.Warn("truncated an interrupted append at the end of the log", "file", path, "offset", sc.end, "bytes", len(data)-int(sc.end))
		if err := truncateDurable(f, sc.end); err != nil {
			_ = f.Close()
			return nil, err
		}
		seg.size = sc.end
	}
	return seg, nil
}

// Close closes the files and releases the lock. The WAL must not be used afterwards.
func (w *WAL) Close() error {
	w.writeMu.Lock()
	defer w.writeMu.Unlock()
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return nil
	}
	w.closed = true
	return w.closeFiles()
}

func (w *WAL) closeFiles() error {
	var errs []error
	for _, s := range w.segs {
		errs = append(errs, s.f.Close())
	}
	w.segs = nil
	if w.lock != nil {
		errs = append(errs, w.lock.Close()) // releases the flock
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("close raft wal %s: %w", w.dir, err)
	}
	return nil
}

// IsMonotonic tells raft that the indexes stored are contiguous, so after installing a
// snapshot it deletes the whole log instead of leaving a gap.
func (w *WAL) IsMonotonic() bool { return true }

// FirstIndex returns the lowest stored index, 0 when the log is empty.
func (w *WAL) FirstIndex() (uint64, error) {
	w.mu.RLock()
	defer w.mu.RUnlock()
	return w.first, nil
}

// LastIndex returns the highest stored index, 0 when the log is empty.
func (w *WAL) LastIndex() (uint64, error) {
	w.mu.RLock()
	defer w.mu.RUnlock()
	return w.last, nil
}

// GetLog reads the entry at index into log. A missing index returns raft.ErrLogNotFound
// itself (unwrapped: raft compares with ==). Data and Extensions are copies the caller owns.
func (w *WAL) GetLog(index uint64, log *raft.Log) error {
	w.mu.RLock()
	defer w.mu.RUnlock()
	if w.closed {
		return fmt.Errorf("raft wal %s: closed", w.dir)
	}
	if w.first == 0 || index < w.first || index > w.last {
		return raft.ErrLogNotFound
	}
	// The segment holding index: the last one whose base is not above it.
	i := sort.Search(len(w.segs), func(i int) bool { return w.segs[i].base > index }) - 1
	seg := w.segs[i]
	k := index - seg.base
	off, end := seg.offs[k], seg.end
	if k+1 < uint64(len(seg.offs)) {
		end = seg.offs[k+1]
	}
	// The file stays open while mu is read-held: DeleteRange closes files only after it
	// has taken them out of segs under the write lock.
	buf := make([]byte, end-off)
	if _, err := seg.f.ReadAt(buf, off); err != nil {
		return fmt.Errorf("raft wal %s: read log %d at offset %d: %w", seg.path, index, off, err)
	}
	payload, _, st := readFrame(buf)
	if st != frameOK {
		return fmt.Errorf("raft wal %s: log %d at offset %d: %s", seg.path, index, off, describeFrame(st))
	}
	if err := decodeLog(payload, log); err != nil {
		return fmt.Errorf("raft wal %s: log %d at offset %d: %w", seg.path, index, off, err)
	}
	if log.Index != index {
		return fmt.Errorf("raft wal %s: log %d at offset %d: record holds index %d", seg.path, index, off, log.Index)
	}
	return nil
}

// StoreLog appends one entry.
func (w *WAL) StoreLog(log *raft.Log) error {
	return w.StoreLogs([]*raft.Log{log})
}

// StoreLogs appends the entries with one write and one fdatasync; they are visible to GetLog
// once both succeeded. Their indexes must be contiguous and follow LastIndex (any index when
// the log is empty). After a failed write or sync every later write fails too: what reached
// the disk is unknown until the WAL is opened again.
func (w *WAL) StoreLogs(logs []*raft.Log) error {
	if len(logs) == 0 {
		return nil
	}
	w.writeMu.Lock()
	defer w.writeMu.Unlock()
	if err := w.storeLogs(logs); err != nil {
		return fmt.Errorf("raft wal %s: store logs %d-%d: %w", w.dir, logs[0].Index, logs[len(logs)-1].Index, err)
	}
	return nil
}

func (w *WAL) storeLogs(logs []*raft.Log) error {
	if w.closed {
		return errors.New("closed")
	}
	if w.failed != nil {
		return fmt.Errorf("an earlier write failed: %w", w.failed)
	}
	start := logs[0].Index
	if start == 0 {
		return errors.New("index 0 is not a log index")
	}
	if w.last != 0 && start != w.last+1 {
		return fmt.Errorf("first index %d does not follow the last stored %d", start, w.last)
	}
	w.buf = w.buf[:0]
	var offs []int64
	for i, l := range logs {
		if l.Index != start+uint64(i) {
			return fmt.Errorf("index %d at position %d of a batch starting at %d: not contiguous", l.Index, i, start)
		}
		offs = append(offs, int64(len(w.buf)))
		var err error
		if w.buf, err = appendFrame(w.buf, l); err != nil {
			return err
		}
	}
	if w.last == 0 && start < w.metaFirst {
		// The log was emptied (a snapshot installed, DeleteRange of everything) and now
		// restarts below the deleted records' first: lower the recorded first index first.
		if err := w.writeMeta(start); err != nil {
			return err
		}
	}
	seg, err := w.activeFor(start)
	if err != nil {
		return err
	}
	if err := w.write(seg, w.buf); err != nil {
		w.failed = err
		return err
	}
	w.mu.Lock()
	for _, o := range offs {
		seg.offs = append(seg.offs, seg.end+o)
	}
	seg.end += int64(len(w.buf))
	if w.first == 0 {
		w.first = start
	}
	w.last = logs[len(logs)-1].Index
	w.mu.Unlock()
	return nil
}

// activeFor returns the segment the batch starting at index goes to: the active one, or a
// new one when there is none or it has reached the segment size (the old one is sealed:
// truncated to its records and fsynced).
func (w *WAL) activeFor(index uint64) (*segment, error) {
	if n := len(w.segs); n > 0 {
		seg := w.segs[n-1]
		if seg.end < w.opts.SegmentSize {
			return seg, nil
		}
		if err := truncateDurable(seg.f, seg.end); err != nil {
			w.failed = err
			return nil, err
		}
		seg.size = seg.end
	}
	path := filepath.Join(w.dir, segmentName(index))
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syncDir(w.dir); err != nil {
		_ = f.Close()
		w.failed = err
		return nil, err
	}
	seg := &segment{base: index, path: path, f: f}
	w.mu.Lock()
	w.segs = append(w.segs, seg)
	w.mu.Unlock()
	return seg, nil
}

// write puts b at the end of seg's records and fdatasyncs, zero-filling the file ahead first
// when b does not fit in the space already zero-filled.
func (w *WAL) write(seg *segment, b []byte) error {
	need := seg.end + int64(len(b))
	if w.opts.GrowStep > 0 && need > seg.size {
		grown := (need/w.opts.GrowStep + 1) * w.opts.GrowStep
		if err := writeZeros(seg.f, seg.size, grown); err != nil {
			return err
		}
		seg.size = grown
	}
	if _, err := seg.f.WriteAt(b, seg.end); err != nil {
		return err
	}
	seg.size = max(seg.size, need)
	if err := unix.Fdatasync(int(seg.f.Fd())); err != nil {
		return fmt.Errorf("fdatasync %s: %w", seg.path, err)
	}
	return nil
}

var zeros = make([]byte, 1<<20)

func writeZeros(f *os.File, from, to int64) error {
	for off := from; off < to; {
		n := min(int64(len(zeros)), to-off)
		if _, err := f.WriteAt(zeros[:n], off); err != nil {
			return err
		}
		off += n
	}
	return nil
}

// DeleteRange deletes the entries min..max, both inclusive, durably. The range must reach
// one end of the stored log: a prefix (compaction: whole segments below the new first index
// are removed and the index is recorded in dir/meta), a suffix (a conflicting tail: the
// segment holding min is truncated and the ones after it removed) or all of it. Indexes
// outside the stored range are ignored; a range strictly inside it is an error.
func (w *WAL) DeleteRange(min, max uint64) error {
	w.writeMu.Lock()
	defer w.writeMu.Unlock()
	if err := w.deleteRange(min, max); err != nil {
		return fmt.Errorf("raft wal %s: delete range %d-%d: %w", w.dir, min, max, err)
	}
	return nil
}

func (w *WAL) deleteRange(lo, hi uint64) error {
	if w.closed {
		return errors.New("closed")
	}
	if lo > hi || w.first == 0 || hi < w.first || lo > w.last {
		return nil
	}
	if w.failed != nil {
		return fmt.Errorf("an earlier write failed: %w", w.failed)
	}
	var err error
	switch {
	case lo <= w.first && hi >= w.last:
		err = w.deleteHead(w.last)
	case lo <= w.first:
		err = w.deleteHead(hi)
	case hi >= w.last:
		err = w.deleteTail(lo)
	default:
		return fmt.Errorf("only a prefix or a suffix of %d-%d can be deleted", w.first, w.last)
	}
	if err != nil {
		w.failed = err
	}
	return err
}

// deleteHead deletes every record up to hi (at most the last one): first the new first index
// goes to dir/meta, then the segments it leaves without a live record are removed.
func (w *WAL) deleteHead(hi uint64) error {
	if err := w.writeMeta(hi + 1); err != nil {
		return err
	}
	w.mu.Lock()
	var gone []*segment
	for len(w.segs) > 0 && w.segs[0].lastIndex() <= hi {
		gone = append(gone, w.segs[0])
		w.segs = w.segs[1:]
	}
	if len(w.segs) == 0 {
		w.first, w.last = 0, 0
	} else {
		w.first = hi + 1
	}
	w.mu.Unlock()
	return removeSegments(w.dir, gone)
}

// deleteTail deletes the records from lo (above the first one) to the last: segments after
// the one holding lo are removed newest first, so that a crash leaves a log without a gap;
// then that segment is truncated.
func (w *WAL) deleteTail(lo uint64) error {
	w.mu.Lock()
	i := sort.Search(len(w.segs), func(i int) bool { return w.segs[i].base > lo }) - 1
	seg := w.segs[i]
	k := lo - seg.base
	gone := slices.Clone(w.segs[i+1:])
	if k == 0 {
		gone = slices.Clone(w.segs[i:])
		w.segs = w.segs[:i]
	} else {
		w.segs = w.segs[:i+1]
	}
	w.last = lo - 1
	var cut int64 = -1
	if k > 0 {
		cut = seg.offs[k]
		seg.offs = seg.offs[:k]
		seg.end = cut
	}
	w.mu.Unlock()
	slices.Reverse(gone)
	if err := removeSegments(w.dir, gone); err != nil {
		return err
	}
	if cut >= 0 {
		if err := truncateDurable(seg.f, cut); err != nil {
			return err
		}
		seg.size = cut
	}
	return nil
}

// removeSegments closes and removes the files in order, then fsyncs the directory.
func removeSegments(dir string, segs []*segment) error {
	if len(segs) == 0 {
		return nil
	}
	for _, s := range segs {
		_ = s.f.Close() // the removal is what matters; a close error changes nothing on disk
		if err := os.Remove(s.path); err != nil {
			return err
		}
	}
	return syncDir(dir)
}

// meta file: "CWALMETA", uint64 first index, CRC-32C of the 16 bytes before it.
const metaMagic = "CWALMETA"

// writeMeta records first durably: a temporary file, fsynced, renamed over dir/meta, and the
// directory fsynced.
func (w *WAL) writeMeta(first uint64) error {
	b := binary.BigEndian.AppendUint64([]byte(metaMagic), first)
	b = binary.BigEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
	path := filepath.Join(w.dir, metaFile)
	if err := writeFileDurable(path, b); err != nil {
		return err
	}
	w.metaFirst = first
	return nil
}

// readMeta returns the first index recorded in path, 0 when there is no such file.
func readMeta(path string) (uint64, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	if len(b) != len(metaMagic)+12 || string(b[:len(metaMagic)]) != metaMagic ||
		crc32.Checksum(b[:len(b)-4], castagnoli) != binary.BigEndian.Uint32(b[len(b)-4:]) {
		return 0, fmt.Errorf("corrupt raft wal meta file %s (%d bytes)", path, len(b))
	}
	return binary.BigEndian.Uint64(b[len(metaMagic):]), nil
}
