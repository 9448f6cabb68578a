package server

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"

	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/fsm"
)

// errWritten tells wrap that the handler wrote the answer itself.
var errWritten = errors.New("answer written")

type httpSink struct{ w http.ResponseWriter }

func (h *httpSink) Write(p []byte) (int, error) { return h.w.Write(p) }
func (h *httpSink) Close() error                { return nil }
func (h *httpSink) ID() string                  { return "http" }
func (h *httpSink) Cancel() error               { return nil }

// minSnapshotBytes: a bbolt file is at least its two meta pages, a
// freelist and a root page (4 pages of 4 KiB is the smallest chime writes;
// 2 pages are the format's minimum).
const minSnapshotBytes = 8192

// receiveSnapshot streams the body of a snapshot upload to a temporary
// file in the data dir and validates it. It returns the file's path
// (the caller removes it, also on error) and size.
func (s *Server) receiveSnapshot(w http.ResponseWriter, r *http.Request) (string, int64, error) {
	f, err := os.CreateTemp(s.cfg.DataDir, "snapshot-upload-*.db")
	if err != nil {
		return "", 0, fmt.Errorf("restore: temporary file: %w", err)
	}
	path := f.Name()
	n, err := io.Copy(f, http.MaxBytesReader(w, r.Body, s.cfg.SnapshotMaxBytes))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return path, n, &api.Error{Status: http.StatusRequestEntityTooLarge, Field: "body",
				Message: fmt.Sprintf("body: the snapshot is larger than --snapshot-max-bytes (%d bytes)", tooBig.Limit)}
		}
		return path, n, api.BodyError(err)
	}
	if n < minSnapshotBytes {
		return path, n, structs.Invalid("body", "not a chime snapshot (%d bytes)", n)
	}
	if err := fsm.ValidateSnapshotFile(path); err != nil {
		return path, n, structs.Invalid("body", "not a valid chime snapshot: %v", err)
	}
	return path, n, nil
}
