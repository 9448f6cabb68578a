package endpoint_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/chime-ha/chime/chime/server/endpoint"
	"github.com/chime-ha/chime/chime/structs"
)

// TestLostSecretNeedsAReset: an agent that lost its data dir registers as
// its node (the id is the host's) with a new secret: refused, with an event
// and a message that names the operator's command, until `node
// reset-secret`; then its registration sets the new secret (once), the old
// secret stops working and the new one works.
func TestLostSecretNeedsAReset(t *testing.T) {
	newSecret := fmt.Sprintf("%064d", 77)
	for _, tc := range []struct {
		name      string
		reset     bool
		addr      string // the registering agent's API address ("": the node's own)
		secret    string // "none": the request carries no secret
		wantErr   error
		wantEvent string
	}{
		{name: "no reset: refused, an event", wantErr: structs.ErrForbidden, wantEvent: "node.registration_refused"},
		{name: "no reset, no secret at all: refused", secret: "none", wantErr: structs.ErrForbidden, wantEvent: "node.registration_refused"},
		{name: "no reset, another address while alive: conflict", addr: "10.0.0.99:4650", wantErr: structs.ErrForbidden, wantEvent: "node.identity_conflict"},
		{name: "after reset-secret: new secret set", reset: true, wantEvent: "node.secret_replaced"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t)
			w.register("r1", hv1ID, "hv1", 1)
			old := registerRequest(hv1ID, "hv1", 1).Secret
			if tc.reset {
				res, err := w.ep.NodeAction(w.ctx, "reset", "hv1", endpoint.NodeResetSecret, false)
				if err != nil || res.Node == nil || !res.Node.SecretReset {
					t.Fatalf("reset-secret = %+v, %v", res, err)
				}
				// The old secret works until the new one is set.
				if _, err := w.ep.Authenticate(hv1ID, old); err != nil {
					t.Fatalf("old secret while a reset is pending: %v", err)
				}
			}
			req := registerRequest(hv1ID, "hv1", 1)
			req.Secret = newSecret
			if tc.addr != "" {
				req.APIAddr = tc.addr
			}
			if tc.secret == "none" {
				req.Secret = ""
			}
			_, err := w.ep.Register(w.ctx, "r2", req)
			if (tc.wantErr == nil) != (err == nil) || (tc.wantErr != nil && !errors.Is(err, tc.wantErr)) {
				t.Fatalf("register with a new secret: %v, want %v", err, tc.wantErr)
			}
			if err != nil && !strings.Contains(err.Error(), "chime node reset-secret hv1") {
				t.Errorf("refusal %q does not name the operator's command", err)
			}
			ev, _ := w.FSM.Events(0, 100)
			if last := ev[len(ev)-1]; last.Kind != tc.wantEvent || last.NodeID != hv1ID {
				t.Fatalf("last event %s (%s); want %s", last.Kind, last.Message, tc.wantEvent)
			}
			_, oldErr := w.ep.Authenticate(hv1ID, old)
			_, newErr := w.ep.Authenticate(hv1ID, newSecret)
			if tc.reset {
				if !errors.Is(oldErr, structs.ErrForbidden) || newErr != nil {
					t.Fatalf("after the replacement: old secret %v (want forbidden), new secret %v (want ok)", oldErr, newErr)
				}
				// The reset is used up: yet another secret is refused; the
				// new one re-registers (a retry whose answer was lost).
				again := registerRequest(hv1ID, "hv1", 1)
				again.Secret = fmt.Sprintf("%064d", 78)
				if _, err := w.ep.Register(w.ctx, "r3", again); !errors.Is(err, structs.ErrForbidden) {
					t.Fatalf("second replacement after one reset: %v, want forbidden", err)
				}
				if _, err := w.ep.Register(w.ctx, "r4", req); err != nil {
					t.Fatalf("retry with the new secret: %v", err)
				}
			} else if oldErr != nil || (newErr == nil && tc.secret != "none") {
				t.Fatalf("refused registration changed the secret: old %v, new %v", oldErr, newErr)
			}
		})
	}
}
