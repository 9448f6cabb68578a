package health

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
)

// The storage check: a write+fsync+read-back probe in every storage path.

func (h *Checker) checkStorage(ctx context.Context, dir string) {
	h.mu.Lock()
	run := h.inflight[dir]
	if run == nil {
		run = &storageRun{done: make(chan struct{})}
		h.inflight[dir] = run
		go func() {
			// Not owned by a WaitGroup on purpose: a probe stuck in the
			// kernel never returns, and must not hang the agent with it.
			defer close(run.done)
			run.err = h.cfg.StorageProbe(dir)
		}()
	}
	h.mu.Unlock()

	t := h.cfg.Clock.NewTimer(h.cfg.StorageTimeout)
	defer t.Stop()
	var err error
	select {
	case <-ctx.Done():
		return
	case <-run.done:
		err = run.err
		h.mu.Lock()
		delete(h.inflight, dir)
		h.mu.Unlock()
	case <-t.C():
		err = fmt.Errorf("probe did not finish within %s", h.cfg.StorageTimeout)
	}
	fault := storageFault(dir, err)
	h.mu.Lock()
	prev := h.storage[dir]
	h.storage[dir] = fault
	h.mu.Unlock()
	if fault != prev && fault != "" {
		h.log.Warn("storage probe failed", "path", dir, "error", err)
	} else if fault != prev {
		h.log.Info("storage probe succeeds again", "path", dir)
	}
}

// storageFault is the fault for a storage probe's outcome ("" when it
// succeeded).
func storageFault(dir string, err error) string {
	if err == nil {
		return ""
	}
	return truncateFault(fmt.Sprintf("storage path %s not writable: %v", dir, err))
}

// writeProbe writes a fresh random token to dir/.chime-probe, fsyncs it and
// reads it back.
func writeProbe(dir string) error {
	var token [16]byte
	_, _ = rand.Read(token[:])
	want := []byte("chime storage probe " + hex.EncodeToString(token[:]) + "\n")
	path := filepath.Join(dir, ProbeFile)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(want); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	got, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if !bytes.Equal(got, want) {
		return fmt.Errorf("read back from %s differs from what was written", path)
	}
	return nil
}
