package fsm

// The Raft log and stable store live here rather than in raft-boltdb: raft-boltdb/v2 v2.3.1
// imports go-metrics/compat, which go-metrics v0.7.0 (required by raft v1.8.0 and memberlist
// v0.7.0) removed, so the three do not build together (fsm/DESIGN.md).

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/raft"
	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// logStoreOpenTimeout bounds how long OpenLogStore waits for bbolt's file lock, so that a
// second server started on the same data dir fails with a clear error instead of hanging.
const logStoreOpenTimeout = 5 * time.Second

var (
	lsBucketLogs   = []byte("logs")   // big-endian uint64 index -> encoded raft.Log
	lsBucketStable = []byte("stable") // raft's own keys (CurrentTerm, LastVoteTerm, ...) -> bytes
)

// errStableNotFound is what the StableStore returns for a missing key. hashicorp/raft compares
// err.Error() with the literal "not found" (api.go, raft.go), so the text must stay exactly that.
var errStableNotFound = errors.New("not found")

// LogStore is a raft.LogStore and raft.StableStore backed by one bbolt file.
// Writes are fsynced (bbolt's NoSync stays off): a Raft vote or log entry that is
// acknowledged but lost on power failure breaks Raft's safety. It is safe for concurrent use.
type LogStore struct {
	db   *bolt.DB // owns the file lock
	path string   // for error messages
}

var (
	_ raft.LogStore    = (*LogStore)(nil)
	_ raft.StableStore = (*LogStore)(nil)
)

// OpenLogStore opens (creating if needed) the bbolt file at path with mode 0600.
// If another process holds the file, it gives up after 5 s with an error saying so.
func OpenLogStore(path string) (*LogStore, error) {
	return openLogStore(path, logStoreOpenTimeout)
}

func openLogStore(path string, timeout time.Duration) (*LogStore, error) {
	// The freelist is not written at each commit (NoFreelistSync; bbolt
	// rebuilds it from the pages at open) and is kept as a map: a commit
	// writes the entries' pages and the meta page, each fdatasynced as
	// before, but no longer the freelist's pages, which after log
	// compaction (DeleteRange) were the bulk of every append's writes.
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: timeout, NoFreelistSync: true, FreelistType: bolt.FreelistMapType})
	if err != nil {
		if errors.Is(err, berrors.ErrTimeout) {
			return nil, fmt.Errorf("open raft log store %s: file is locked by another process (is another chime server using this data dir?): %w", path, err)
		}
		return nil, fmt.Errorf("open raft log store %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, name := range [][]byte{lsBucketLogs, lsBucketStable} {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return fmt.Errorf("create bucket %q: %w", name, err)
			}
		}
		return nil
	})
	if err != nil {
		_ = db.Close() // the init error is the one worth reporting
		return nil, fmt.Errorf("open raft log store %s: %w", path, err)
	}
	return &LogStore{db: db, path: path}, nil
}

// Close releases the file. The store must not be used afterwards.
func (s *LogStore) Close() error {
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("close raft log store %s: %w", s.path, err)
	}
	return nil
}

// FirstIndex returns the lowest stored index, 0 when the log is empty.
func (s *LogStore) FirstIndex() (uint64, error) {
	return s.edgeIndex(func(c *bolt.Cursor) []byte { k, _ := c.First(); return k })
}

// LastIndex returns the highest stored index, 0 when the log is empty.
func (s *LogStore) LastIndex() (uint64, error) {
	return s.edgeIndex(func(c *bolt.Cursor) []byte { k, _ := c.Last(); return k })
}

func (s *LogStore) edgeIndex(pick func(*bolt.Cursor) []byte) (uint64, error) {
	var idx uint64
	err := s.db.View(func(tx *bolt.Tx) error {
		k := pick(tx.Bucket(lsBucketLogs).Cursor())
		if k == nil {
			return nil
		}
		if len(k) != 8 {
			return fmt.Errorf("corrupt log key %x: want 8 bytes", k)
		}
		idx = binary.BigEndian.Uint64(k)
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("raft log store %s: %w", s.path, err)
	}
	return idx, nil
}

// GetLog reads the entry at index into log. A missing index returns raft.ErrLogNotFound
// itself (unwrapped: raft compares with ==). The returned Data and Extensions are copies
// the caller owns.
func (s *LogStore) GetLog(index uint64, log *raft.Log) error {
	var found bool
	err := s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(lsBucketLogs).Get(lsKey(index))
		if v == nil {
			return nil
		}
		found = true
		// decodeLog copies out of v, which is only valid inside this transaction.
		if err := decodeLog(v, log); err != nil {
			return fmt.Errorf("decode log %d: %w", index, err)
		}
		if log.Index != index {
			return fmt.Errorf("decode log %d: record holds index %d", index, log.Index)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("raft log store %s: %w", s.path, err)
	}
	if !found {
		return raft.ErrLogNotFound
	}
	return nil
}

// StoreLog writes one entry.
func (s *LogStore) StoreLog(log *raft.Log) error {
	return s.StoreLogs([]*raft.Log{log})
}

// StoreLogs writes the entries in one transaction: all of them or none.
func (s *LogStore) StoreLogs(logs []*raft.Log) error {
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(lsBucketLogs)
		for _, l := range logs {
			// bbolt keeps a reference to the value until commit, so each entry needs its own
			// buffer; allocate once per entry, sized to fit.
			buf := encodeLog(make([]byte, 0, encodedLogSize(l)), l)
			if err := b.Put(lsKey(l.Index), buf); err != nil {
				return fmt.Errorf("store log %d: %w", l.Index, err)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("raft log store %s: %w", s.path, err)
	}
	return nil
}

// DeleteRange deletes the entries min..max, both inclusive. Missing indexes are ignored.
func (s *LogStore) DeleteRange(min, max uint64) error {
	if min > max {
		return nil
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		c := tx.Bucket(lsBucketLogs).Cursor()
		// Seek again after each Delete: bbolt's cursor may skip the next key when
		// Delete is followed by Next.
		for k, _ := c.Seek(lsKey(min)); k != nil; k, _ = c.Seek(k) {
			if len(k) != 8 {
				return fmt.Errorf("corrupt log key %x: want 8 bytes", k)
			}
			if binary.BigEndian.Uint64(k) > max {
				break
			}
			k = append([]byte(nil), k...) // k points into the page Delete modifies
			if err := c.Delete(); err != nil {
				return fmt.Errorf("delete log %d: %w", binary.BigEndian.Uint64(k), err)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("raft log store %s: delete range %d-%d: %w", s.path, min, max, err)
	}
	return nil
}

// Set stores val under key in the stable bucket.
func (s *LogStore) Set(key []byte, val []byte) error {
	err := s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(lsBucketStable).Put(key, val)
	})
	if err != nil {
		return fmt.Errorf("raft stable store %s: set %q: %w", s.path, key, err)
	}
	return nil
}

// Get returns a copy of the value under key. A missing key returns a nil value and an
// error whose text is exactly "not found", which raft checks for.
func (s *LogStore) Get(key []byte) ([]byte, error) {
	var val []byte
	err := s.db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(lsBucketStable).Get(key); v != nil {
			val = append([]byte{}, v...) // non-nil even for an empty value
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("raft stable store %s: get %q: %w", s.path, key, err)
	}
	if val == nil {
		return nil, errStableNotFound
	}
	return val, nil
}

// SetUint64 stores val as 8 big-endian bytes.
func (s *LogStore) SetUint64(key []byte, val uint64) error {
	return s.Set(key, binary.BigEndian.AppendUint64(nil, val))
}

// GetUint64 reads a value written by SetUint64. A missing key returns 0 and the
// "not found" error.
func (s *LogStore) GetUint64(key []byte) (uint64, error) {
	v, err := s.Get(key)
	if err != nil {
		return 0, err // errStableNotFound must reach raft unwrapped
	}
	if len(v) != 8 {
		return 0, fmt.Errorf("raft stable store %s: key %q holds %d bytes, want 8", s.path, key, len(v))
	}
	return binary.BigEndian.Uint64(v), nil
}

func lsKey(index uint64) []byte {
	return binary.BigEndian.AppendUint64(make([]byte, 0, 8), index)
}

// Log record encoding, version 1:
//
//	byte    version (1)
//	uvarint Index
//	uvarint Term
//	byte    Type
//	uvarint len(Data),       Data bytes
//	uvarint len(Extensions), Extensions bytes
//	byte    0 if AppendedAt is the zero time, else 1 followed by
//	varint  AppendedAt Unix seconds, uvarint nanoseconds (0..999999999)
//
// A new field means a new version byte; decodeLog rejects versions it does not know, so an
// old binary never silently drops data written by a newer one.
const logEncodingV1 = 1

// encodedLogSize is an upper bound of the encoded size of l.
func encodedLogSize(l *raft.Log) int {
	return 1 + 3*binary.MaxVarintLen64 + 1 + 2*binary.MaxVarintLen64 + len(l.Data) + len(l.Extensions) + 1 + binary.MaxVarintLen64 + binary.MaxVarintLen32
}

// encodeLog appends the encoding of l to dst and returns the extended slice.
func encodeLog(dst []byte, l *raft.Log) []byte {
	dst = append(dst, logEncodingV1)
	dst = binary.AppendUvarint(dst, l.Index)
	dst = binary.AppendUvarint(dst, l.Term)
	dst = append(dst, byte(l.Type))
	dst = binary.AppendUvarint(dst, uint64(len(l.Data)))
	dst = append(dst, l.Data...)
	dst = binary.AppendUvarint(dst, uint64(len(l.Extensions)))
	dst = append(dst, l.Extensions...)
	if l.AppendedAt.IsZero() {
		return append(dst, 0)
	}
	dst = append(dst, 1)
	dst = binary.AppendVarint(dst, l.AppendedAt.Unix())
	return binary.AppendUvarint(dst, uint64(l.AppendedAt.Nanosecond()))
}

// decodeLog fills l from b. It never panics: truncated, oversized or otherwise corrupt
// input returns an error. Data and Extensions are copied (nil when empty), so b may be
// reused by the caller afterwards.
func decodeLog(b []byte, l *raft.Log) error {
	d := logDecoder{b: b}
	if v := d.byte("version"); d.err == nil && v != logEncodingV1 {
		return fmt.Errorf("corrupt log record: unknown encoding version %d", v)
	}
	var out raft.Log
	out.Index = d.uvarint("index")
	out.Term = d.uvarint("term")
	out.Type = raft.LogType(d.byte("type"))
	out.Data = d.bytes("data")
	out.Extensions = d.bytes("extensions")
	switch flag := d.byte("appended_at flag"); {
	case d.err != nil:
	case flag == 0:
	case flag == 1:
		sec := d.varint("appended_at seconds")
		nsec := d.uvarint("appended_at nanoseconds")
		if d.err == nil && nsec >= uint64(time.Second) {
			d.err = fmt.Errorf("appended_at nanoseconds %d out of range", nsec)
		}
		out.AppendedAt = time.Unix(sec, int64(nsec)).UTC()
	default:
		d.err = fmt.Errorf("bad appended_at flag %d", flag)
	}
	if d.err != nil {
		return fmt.Errorf("corrupt log record: %w", d.err)
	}
	if len(d.b) != 0 {
		return fmt.Errorf("corrupt log record: %d trailing bytes", len(d.b))
	}
	*l = out
	return nil
}

// logDecoder reads fields from b; after the first failure every read returns a zero value
// and err keeps the first failure.
type logDecoder struct {
	b   []byte // what is left to read
	err error  // first failure
}

func (d *logDecoder) fail(field, why string) {
	if d.err == nil {
		d.err = fmt.Errorf("%s: %s", field, why)
	}
}

func (d *logDecoder) byte(field string) byte {
	if d.err != nil {
		return 0
	}
	if len(d.b) < 1 {
		d.fail(field, "truncated")
		return 0
	}
	v := d.b[0]
	d.b = d.b[1:]
	return v
}

func (d *logDecoder) uvarint(field string) uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail(field, "bad uvarint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *logDecoder) varint(field string) int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.fail(field, "bad varint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *logDecoder) bytes(field string) []byte {
	n := d.uvarint(field + " length")
	if d.err != nil {
		return nil
	}
	// Compare as uint64 before converting: a huge n must not wrap to a negative int.
	if n > uint64(len(d.b)) {
		d.fail(field, fmt.Sprintf("length %d exceeds the %d bytes left", n, len(d.b)))
		return nil
	}
	if n == 0 {
		return nil
	}
	v := append([]byte(nil), d.b[:n]...)
	d.b = d.b[n:]
	return v
}
