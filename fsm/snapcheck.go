package fsm

import (
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"io"
	"os"
	"time"

	bolt "go.etcd.io/bbolt"
)

// checkStateFile checks a state file received from outside (a snapshot to
// restore) before anything else opens it: its layout (below), then
// bbolt's own consistency check of every page, read-only. bbolt panics
// on some damaged pages (keys out of order, a branch pointing at a
// freed page); the panic is recovered here and becomes the error, so a
// damaged snapshot is refused instead of killing the server (found by
// FuzzRestore; crashers in testdata/fuzz/FuzzRestore).
func checkStateFile(path string) (err error) {
	if err := checkStateFileLayout(path); err != nil {
		return err
	}
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("state file is damaged: %v", p)
		}
	}()
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		return err
	}
	defer db.Close()
	return db.View(func(tx *bolt.Tx) error {
		var first error
		for e := range tx.Check() { // drained: the checker runs until it closes the channel
			if first == nil {
				first = fmt.Errorf("state file is damaged: %w", e)
			}
		}
		return first
	})
}

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
