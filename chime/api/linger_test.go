package api

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"syscall"
	"testing"
	"time"
)

// A request given up on closes its connection with a reset when the
// client discards unsent data (the agent's heartbeats), and with a FIN
// otherwise: the server reading the connection sees ECONNRESET or EOF.
func TestDiscardUnsentOnClose(t *testing.T) {
	tests := []struct {
		name    string
		discard bool
		reset   bool
	}{
		{"plain close", false, false},
		{"discard unsent", true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			got := make(chan error, 1)
			go func() {
				conn, err := ln.Accept()
				if err != nil {
					got <- err
					return
				}
				defer conn.Close()
				br := bufio.NewReader(conn)
				req, err := http.ReadRequest(br)
				if err == nil {
					_, err = io.Copy(io.Discard, req.Body)
				}
				if err != nil {
					got <- err
					return
				}
				// Never answer: the client gives up; what does the next read see?
				_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
				_, err = br.ReadByte()
				got <- err
			}()
			c := NewClient(ln.Addr().String())
			c.Retries = 0
			if tt.discard {
				c.DiscardUnsentOnClose()
			}
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel()
			if _, err := c.Heartbeat(ctx, HeartbeatRequest{NodeID: "n"}); err == nil {
				t.Fatal("a heartbeat nobody answers succeeded")
			}
			err = <-got
			if reset := errors.Is(err, syscall.ECONNRESET); reset != tt.reset {
				t.Fatalf("the server read %v after the client gave up; want a reset: %v", err, tt.reset)
			}
			if !tt.reset && !errors.Is(err, io.EOF) {
				t.Fatalf("the server read %v, want EOF", err)
			}
		})
	}
}
