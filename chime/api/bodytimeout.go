package api

import (
	"errors"
	"io"
	"net/http"
	"os"
	"time"
)

// BodyReadTimeout bounds reading one API request body: a client that
// sends its body slower than this (slowloris) loses its connection.
const BodyReadTimeout = 30 * time.Second

// LimitBody bounds r's body to max bytes and to reading within d. The
// deadline is set on the connection before the handler reads and lifted
// again once the body is read to its end, so that it never cuts a
// blocking query that waits after its body (http.Server.ReadTimeout
// would: it cancels the request's context when it expires, also after the
// body was read). An expired deadline reads as a 408 from BodyError.
func LimitBody(w http.ResponseWriter, r *http.Request, max int64, d time.Duration) {
	rc := http.NewResponseController(w)
	if r.Body == nil || r.Body == http.NoBody || rc.SetReadDeadline(time.Now().Add(d)) != nil {
		r.Body = http.MaxBytesReader(w, r.Body, max)
		return
	}
	r.Body = &deadlineBody{ReadCloser: http.MaxBytesReader(w, r.Body, max), rc: rc}
}

type deadlineBody struct {
	io.ReadCloser
	rc   *http.ResponseController
	done bool
}

func (b *deadlineBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil && !b.done {
		b.done = true
		if errors.Is(err, os.ErrDeadlineExceeded) {
			// The deadline stays: the server's discard of the rest of
			// the body must not wait for the slow client either.
			return n, errBodyTimeout
		}
		_ = b.rc.SetReadDeadline(time.Time{}) // read to its end (or too big): lift it
	}
	return n, err
}

var errBodyTimeout = errors.New("body: not received within the read timeout")
