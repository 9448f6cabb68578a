package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"runtime/pprof"
)

// startCPUProfile starts a CPU profile written to path (`chime server
// --cpu-profile`, for the benchmarks of docs/benchmarks.md) and returns
// the function that stops it and closes the file.
func startCPUProfile(path string) (func(), error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("cpu profile %s: %w", path, err)
	}
	return func() {
		pprof.StopCPUProfile()
		_ = f.Close()
	}, nil
}

// runWithMemProfile runs run with a context that ends after ctx does, once
// the heap profile of --mem-profile was written: while the server still
// holds its state (after its shutdown the heap would be empty).
func runWithMemProfile(ctx context.Context, path string, run func(context.Context) error) error {
	write, err := startMemProfile(path)
	if err != nil {
		return err
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	var werr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		select {
		case <-ctx.Done():
			werr = write()
			cancel()
		case <-runCtx.Done(): // run returned first (the state machine halted)
		}
	}()
	err = run(runCtx)
	cancel()
	<-done
	return errors.Join(err, werr)
}

// startMemProfile creates path (`chime server --mem-profile`, for the
// benchmarks of docs/benchmarks.md), so that a path that cannot be written
// fails at start, and returns the function that writes the heap profile to
// it when the server stops: after a garbage collection, so that its
// inuse_space is what is live then; alloc_space covers the whole run.
func startMemProfile(path string) (func() error, error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("heap profile: %w", err)
	}
	return func() error {
		// The heap profile is published as of a completed cycle's sweep;
		// two cycles leave no allocation of the run unaccounted.
		runtime.GC()
		runtime.GC()
		werr := pprof.Lookup("heap").WriteTo(f, 0)
		cerr := f.Close()
		if werr != nil {
			return fmt.Errorf("heap profile %s: %w", path, werr)
		}
		if cerr != nil {
			return fmt.Errorf("heap profile %s: %w", path, cerr)
		}
		return nil
	}, nil
}
