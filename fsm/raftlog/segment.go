package raftlog

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/hashicorp/raft"
)

// A segment file holds consecutive records, each one frame:
//
//	uint32 little-endian  n, the length of the payload (1..maxRecord)
//	uint32 little-endian  CRC-32C (Castagnoli) of the 4 length bytes and the payload
//	n bytes               the payload: one raft.Log in the record encoding (encoding.go)
//
// The file is named after the index of its first record (segmentName) and its records'
// indexes follow without a gap. The active (last) segment is grown in zero-filled steps ahead
// of its records (wal.go), so the frame after the last record reads as a zero header; a
// sealed segment is truncated to its last record.
const (
	frameHeaderSize = 8
	// maxRecord bounds one record. Raft entries of chime are small (the HTTP layer bounds
	// request bodies far below this); the bound lets the scan tell a corrupt length field
	// from a record and keeps a bad length from making it allocate gigabytes.
	maxRecord = 64 << 20
	// sectorSize is the unit a disk writes atomically; a torn append leaves whole sectors
	// unwritten (zero: the file was zero-filled or extended past them).
	sectorSize = 512
	segmentExt = ".wal"
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// segmentName is the file name of the segment whose first record has index base: 20 decimal
// digits, so that names sort like indexes.
func segmentName(base uint64) string {
	return fmt.Sprintf("%020d%s", base, segmentExt)
}

// parseSegmentName returns the base index of a segment file name, false for any other name.
func parseSegmentName(name string) (uint64, bool) {
	digits, ok := strings.CutSuffix(filepath.Base(name), segmentExt)
	if !ok || len(digits) != 20 {
		return 0, false
	}
	base, err := strconv.ParseUint(digits, 10, 64)
	if err != nil || base == 0 {
		return 0, false
	}
	return base, true
}

// appendFrame appends the frame of l to dst. It returns an error if the record is larger than
// maxRecord.
func appendFrame(dst []byte, l *raft.Log) ([]byte, error) {
	start := len(dst)
	dst = append(dst, make([]byte, frameHeaderSize)...)
	dst = encodeLog(dst, l)
	n := len(dst) - start - frameHeaderSize
	if n > maxRecord {
		return dst[:start], fmt.Errorf("log %d: record of %d bytes exceeds the %d-byte limit", l.Index, n, maxRecord)
	}
	binary.LittleEndian.PutUint32(dst[start:], uint32(n))
	binary.LittleEndian.PutUint32(dst[start+4:], frameCRC(dst[start:start+4], dst[start+frameHeaderSize:]))
	return dst, nil
}

func frameCRC(length, payload []byte) uint32 {
	return crc32.Update(crc32.Checksum(length, castagnoli), castagnoli, payload)
}

// frameStatus says what readFrame found.
type frameStatus int

const (
	frameOK     frameStatus = iota
	frameEnd                // a zero header: nothing was written here
	frameShort              // the frame runs past the end of the bytes
	frameBadLen             // a zero length with a non-zero checksum, or a length above maxRecord
	frameBadCRC             // a plausible length, a checksum that does not match
)

// readFrame reads the frame at the start of b. For frameOK it returns the payload (a
// sub-slice of b) and the frame's size.
func readFrame(b []byte) (payload []byte, size int, st frameStatus) {
	if len(b) < frameHeaderSize {
		if allZero(b) {
			return nil, 0, frameEnd
		}
		return nil, 0, frameShort
	}
	n := binary.LittleEndian.Uint32(b)
	crc := binary.LittleEndian.Uint32(b[4:])
	switch {
	case n == 0 && crc == 0:
		return nil, 0, frameEnd
	case n == 0 || n > maxRecord:
		return nil, 0, frameBadLen
	case uint64(n) > uint64(len(b)-frameHeaderSize):
		return nil, 0, frameShort
	}
	size = frameHeaderSize + int(n)
	if frameCRC(b[:4], b[frameHeaderSize:size]) != crc {
		return nil, size, frameBadCRC
	}
	return b[frameHeaderSize:size], size, frameOK
}

// scanned is what a segment's bytes hold.
type scanned struct {
	offs []int64 // offset of the frame of record base+i
	end  int64   // end of the last good record: where the next one goes
	torn bool    // bytes after end are the remains of an interrupted append (to truncate)
}

// scanSegment reads the records of one segment file. base is the index the file's name
// gives its first record; last says whether it is the newest segment, the only one an
// interrupted append can have left incomplete.
//
// In the last segment a frame that a crash during an append explains ends the records and
// sets torn: one that runs past the end of the file, a zero header, a zero length, a frame
// whose checksum fails and that covers an all-zero sector (the disk never wrote it). Anything
// else that does not read back is corruption, and so is every bad frame of a sealed segment:
// the error names the offset. scanSegment never panics on any input.
func scanSegment(b []byte, base uint64, last bool) (scanned, error) {
	var sc scanned
	var off int64
	for off < int64(len(b)) {
		payload, size, st := readFrame(b[off:])
		if st == frameOK {
			var l raft.Log
			if err := decodeLog(payload, &l); err != nil {
				return sc, fmt.Errorf("offset %d: %w", off, err)
			}
			if want := base + uint64(len(sc.offs)); l.Index != want {
				return sc, fmt.Errorf("offset %d: record holds index %d, want %d", off, l.Index, want)
			}
			sc.offs = append(sc.offs, off)
			off += int64(size)
			sc.end = off
			continue
		}
		rest := b[off:]
		switch {
		case st == frameEnd && allZero(rest):
			return sc, nil // the zero-filled space after the last record
		case !last:
			return sc, fmt.Errorf("offset %d: %s in a sealed segment", off, describeFrame(st))
		case st == frameEnd, st == frameShort, st == frameBadLen && binary.LittleEndian.Uint32(rest) == 0:
			sc.torn = true
			return sc, nil
		case st == frameBadCRC && hasZeroSector(b, off, off+int64(size)):
			sc.torn = true
			return sc, nil
		default:
			return sc, fmt.Errorf("offset %d: %s", off, describeFrame(st))
		}
	}
	return sc, nil
}

func describeFrame(st frameStatus) string {
	switch st {
	case frameEnd:
		return "data after the end of the records"
	case frameShort:
		return "truncated record"
	case frameBadLen:
		return "bad record length"
	case frameBadCRC:
		return "checksum mismatch"
	}
	return fmt.Sprintf("frame status %d", st)
}

// hasZeroSector reports whether the part of some sector-aligned block of b that lies within
// from..to is all zeros.
func hasZeroSector(b []byte, from, to int64) bool {
	to = min(to, int64(len(b)))
	for s := from; s < to; s = (s/sectorSize + 1) * sectorSize {
		e := min((s/sectorSize+1)*sectorSize, to)
		if allZero(b[s:e]) {
			return true
		}
	}
	return false
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
