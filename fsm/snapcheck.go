package fsm

import (
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"io"
	"os"
)

// checkStateFileLayout checks, before bbolt maps a file received from
// outside (a snapshot to restore), that its meta pages describe a file
// that fits in it. bbolt trusts them: a valid meta page whose high-water
// mark lies past the end of a truncated file makes bbolt read past the
// mapping, and the process dies of SIGBUS, which no recover catches (found
// by FuzzRestore, crasher in testdata/fuzz/FuzzRestore). Layout (bbolt
// 1.x): a 16-byte page header, then magic, version, page size, flags (4
// bytes each), root bucket (root page, sequence), freelist page, page
// high-water mark, txid and the FNV-64a checksum of what precedes it (8
// bytes each).
func checkStateFileLayout(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	size := st.Size()
	const hdr, metaLen = 16, 64
	first := make([]byte, hdr+metaLen)
	if _, err := io.ReadFull(f, first); err != nil {
		return fmt.Errorf("state file of %d bytes is too short for a meta page: %w", size, err)
	}
	pageSize := int64(binary.LittleEndian.Uint32(first[hdr+8:]))
	if pageSize < 512 || pageSize > 1<<16 || pageSize&(pageSize-1) != 0 {
		return fmt.Errorf("state file: page size %d", pageSize)
	}
	if size < 4*pageSize || size%pageSize != 0 {
		return fmt.Errorf("state file: %d bytes is not a whole number (at least 4) of %d-byte pages", size, pageSize)
	}
	valid := 0
	for i := int64(0); i < 2; i++ {
		b := make([]byte, hdr+metaLen)
		if _, err := f.ReadAt(b, i*pageSize); err != nil {
			return fmt.Errorf("state file: meta page %d: %w", i, err)
		}
		m := b[hdr:]
		h := fnv.New64a()
		_, _ = h.Write(m[:56])
		if h.Sum64() != binary.LittleEndian.Uint64(m[56:]) {
			continue // bbolt ignores a meta page with a bad checksum
		}
		if int64(binary.LittleEndian.Uint32(m[8:])) != pageSize {
			return fmt.Errorf("state file: meta page %d has page size %d, meta page 0 %d", i, binary.LittleEndian.Uint32(m[8:]), pageSize)
		}
		root, freelist, hwm := binary.LittleEndian.Uint64(m[16:]), binary.LittleEndian.Uint64(m[32:]), binary.LittleEndian.Uint64(m[40:])
		if hwm > uint64(size/pageSize) {
			return fmt.Errorf("state file: meta page %d says %d pages, the file holds %d", i, hwm, size/pageSize)
		}
		if root >= hwm || (freelist >= hwm && freelist != ^uint64(0)) {
			return fmt.Errorf("state file: meta page %d points past its %d pages (root %d, freelist %d)", i, hwm, root, freelist)
		}
		valid++
	}
	if valid == 0 {
		return fmt.Errorf("state file: no meta page with a valid checksum")
	}
	return nil
}
