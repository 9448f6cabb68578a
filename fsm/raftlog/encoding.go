package raftlog

import (
	"encoding/binary"
	"fmt"
	"time"

	"github.com/hashicorp/raft"
)

// Log record encoding, version 1. It is the payload of every WAL frame (segment.go) and the
// value of raft.db's "logs" bucket as chime wrote it before the WAL (migrate.go reads it):
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
