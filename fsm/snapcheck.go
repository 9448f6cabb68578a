package fsm

import (
	"bytes"
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
		if err := checkPageTree(f, pageSize, hwm, root); err != nil {
			return fmt.Errorf("state file: meta page %d: %w", i, err)
		}
		valid++
	}
	if valid == 0 {
		return fmt.Errorf("state file: no meta page with a valid checksum")
	}
	return nil
}

// checkPageTree walks the B+tree from the root bucket's page the way
// bbolt will, checking every page reference lies inside the file and
// every element inside its page, before bbolt follows one: bbolt reads a
// page through its mapping without bounds checks, and a reference past
// the end of the file is a SIGBUS or SIGSEGV that kills the process
// (also inside bbolt's own consistency check, in a goroutine of its own).
func checkPageTree(f *os.File, pageSize int64, pages uint64, root uint64) error {
	w := pageWalker{f: f, ps: pageSize, pages: pages, seen: map[uint64]bool{}}
	_, err := w.page(root, 0, nil, nil)
	return err
}

type pageWalker struct {
	f     *os.File
	ps    int64
	pages uint64
	seen  map[uint64]bool
}

const (
	pageBranch      = 0x01
	pageLeaf        = 0x02
	leafBucket      = 0x01
	pageHeaderSize  = 16
	branchElemSize  = 16
	leafElemSize    = 16
	bucketHeaderLen = 16
	maxTreeDepth    = 64
)

// page checks the subtree at page id, whose keys must lie in [lo, hi)
// (nil: unbounded), as bbolt's check does; it returns the subtree's
// largest key.
func (w *pageWalker) page(id uint64, depth int, lo, hi []byte) ([]byte, error) {
	if depth > maxTreeDepth {
		return nil, fmt.Errorf("page %d: tree deeper than %d", id, maxTreeDepth)
	}
	if id < 2 || id >= w.pages {
		return nil, fmt.Errorf("page reference %d outside the file's %d pages", id, w.pages)
	}
	if w.seen[id] {
		return nil, fmt.Errorf("page %d referenced twice", id)
	}
	w.seen[id] = true
	hdr := make([]byte, pageHeaderSize)
	if _, err := w.f.ReadAt(hdr, int64(id)*w.ps); err != nil {
		return nil, fmt.Errorf("page %d: %w", id, err)
	}
	if got := binary.LittleEndian.Uint64(hdr); got != id {
		return nil, fmt.Errorf("page %d carries id %d", id, got)
	}
	overflow := uint64(binary.LittleEndian.Uint32(hdr[12:]))
	if overflow >= w.pages || id+overflow >= w.pages {
		return nil, fmt.Errorf("page %d: %d overflow pages run past the file", id, overflow)
	}
	for o := id + 1; o <= id+overflow; o++ {
		if w.seen[o] {
			return nil, fmt.Errorf("page %d referenced twice", o)
		}
		w.seen[o] = true
	}
	buf := make([]byte, int64(overflow+1)*w.ps)
	if _, err := w.f.ReadAt(buf, int64(id)*w.ps); err != nil {
		return nil, fmt.Errorf("page %d: %w", id, err)
	}
	return w.elements(buf, id, depth, lo, hi)
}

// inOrder is bbolt's key order rule: the first key at least lo, each
// next one above the one before, all below hi.
func inOrder(i int, key, prev, hi []byte) bool {
	if prev != nil && bytes.Compare(prev, key) > 0 || i > 0 && bytes.Equal(prev, key) {
		return false
	}
	return hi == nil || bytes.Compare(key, hi) < 0
}

// elements checks one page's elements (buf starts with its header); an
// inline bucket's page is checked in place.
func (w *pageWalker) elements(buf []byte, id uint64, depth int, lo, hi []byte) ([]byte, error) {
	if len(buf) < pageHeaderSize {
		return nil, fmt.Errorf("page %d: too short", id)
	}
	flags, count := binary.LittleEndian.Uint16(buf[8:]), int(binary.LittleEndian.Uint16(buf[10:]))
	body := len(buf) - pageHeaderSize
	switch flags {
	case pageBranch:
		if count == 0 || count*branchElemSize > body {
			return nil, fmt.Errorf("branch page %d: %d elements", id, count)
		}
		keys := make([][]byte, count)
		for i := range keys {
			off := pageHeaderSize + i*branchElemSize
			pos, ksize := int64(binary.LittleEndian.Uint32(buf[off:])), int64(binary.LittleEndian.Uint32(buf[off+4:]))
			if int64(off)+pos+ksize > int64(len(buf)) {
				return nil, fmt.Errorf("branch page %d: element %d's key lies outside the page", id, i)
			}
			keys[i] = buf[int64(off)+pos : int64(off)+pos+ksize]
		}
		var maxKey []byte
		prev := lo
		for i, k := range keys {
			if !inOrder(i, k, prev, hi) {
				return nil, fmt.Errorf("branch page %d: key %d out of order", id, i)
			}
			next := hi
			if i < count-1 {
				next = keys[i+1]
			}
			var err error
			if maxKey, err = w.page(binary.LittleEndian.Uint64(buf[pageHeaderSize+i*branchElemSize+8:]), depth+1, k, next); err != nil {
				return nil, err
			}
			prev = maxKey
		}
		return maxKey, nil
	case pageLeaf:
		if count*leafElemSize > body {
			return nil, fmt.Errorf("leaf page %d: %d elements", id, count)
		}
		prev := lo
		for i := 0; i < count; i++ {
			off := pageHeaderSize + i*leafElemSize
			e := buf[off:]
			eflags, pos := binary.LittleEndian.Uint32(e), int64(binary.LittleEndian.Uint32(e[4:]))
			ksize, vsize := int64(binary.LittleEndian.Uint32(e[8:])), int64(binary.LittleEndian.Uint32(e[12:]))
			start := int64(off) + pos + ksize
			if start+vsize > int64(len(buf)) {
				return nil, fmt.Errorf("leaf page %d: element %d lies outside the page", id, i)
			}
			key := buf[int64(off)+pos : start]
			if !inOrder(i, key, prev, hi) {
				return nil, fmt.Errorf("leaf page %d: key %d out of order", id, i)
			}
			prev = key
			if eflags&leafBucket == 0 {
				continue
			}
			v := buf[start : start+vsize]
			if len(v) < bucketHeaderLen {
				return nil, fmt.Errorf("leaf page %d: bucket element %d is %d bytes", id, i, len(v))
			}
			if root := binary.LittleEndian.Uint64(v); root != 0 {
				if _, err := w.page(root, depth+1, nil, nil); err != nil {
					return nil, err
				}
			} else if _, err := w.elements(v[bucketHeaderLen:], id, depth+1, nil, nil); err != nil { // an inline bucket
				return nil, err
			}
		}
		if count > 0 {
			return prev, nil
		}
		return nil, nil
	}
	return nil, fmt.Errorf("page %d: flags %#x, want a branch or a leaf", id, flags)
}
