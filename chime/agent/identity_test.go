package agent

import (
	"context"
	"errors"
	"net/http"
	"os"
	"strings"
	"testing"

	"github.com/chime-ha/chime/chime/agent/store"
	"github.com/chime-ha/chime/chime/api"
)

// TestNodeIdentityPerHost: the node id comes from libvirt's host UUID on a
// new data dir, and is the same after the data dir is lost (uniqueness
// rule 10); a data dir of another host is refused; libvirt failing to say
// is survivable only with a kept data dir.
func TestNodeIdentityPerHost(t *testing.T) {
	const other = "7c9e6679-7425-40de-944b-e07fc1f90ae7"
	for _, tc := range []struct {
		name      string
		first     string // host uuid at the first start ("" no first start)
		loseDir   bool   // the data dir is wiped between the starts
		now       string // host uuid at this start
		nowErr    error  // HostUUID fails at this start
		want      string
		errHas    string
		errTarget error
	}{
		{name: "new data dir", now: testHostUUID, want: testHostUUID},
		{name: "restart, kept data dir", first: testHostUUID, now: testHostUUID, want: testHostUUID},
		{name: "restart, lost data dir", first: testHostUUID, loseDir: true, now: testHostUUID, want: testHostUUID},
		{name: "data dir of another host", first: other, now: testHostUUID, errHas: "--data-dir", errTarget: store.ErrOtherHost},
		{name: "libvirt silent, kept data dir", first: testHostUUID, nowErr: errors.New("libvirtd down"), want: testHostUUID},
		{name: "libvirt silent, new data dir", nowErr: errors.New("libvirtd down"), errHas: "host uuid unreadable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig(t)
			if tc.first != "" {
				hv := newRecordingHV(&callLog{})
				hv.hostUUID = tc.first
				a, err := New(cfg, hv)
				if err != nil {
					t.Fatal(err)
				}
				a.Close()
				if tc.loseDir {
					if err := os.RemoveAll(cfg.DataDir); err != nil {
						t.Fatal(err)
					}
				}
			}
			hv := newRecordingHV(&callLog{})
			hv.hostUUID, hv.hostErr = tc.now, tc.nowErr
			a, err := New(cfg, hv)
			if tc.errHas != "" {
				if err == nil || !strings.Contains(err.Error(), tc.errHas) || (tc.errTarget != nil && !errors.Is(err, tc.errTarget)) {
					t.Fatalf("New = %v; want an error containing %q (%v)", err, tc.errHas, tc.errTarget)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer a.Close()
			if a.NodeID() != tc.want {
				t.Fatalf("node id = %s, want %s", a.NodeID(), tc.want)
			}
		})
	}
}

// TestPingSaysWhetherRegistered: the ping-back answer names the node and
// says registered only between an accepted registration and a refusal of
// the node's credentials; an agent that lost its data dir and is refused
// answers "not registered", which the servers count as a failed ping-back.
func TestPingSaysWhetherRegistered(t *testing.T) {
	s := newStepped(t, 1, nil)
	ctx := context.Background()
	registered := func(when string, want bool) {
		t.Helper()
		p := s.a.Ping()
		if p.NodeID != testHostUUID || p.Name != "hv1" || p.Registered == nil || *p.Registered != want {
			t.Fatalf("%s: ping = %+v (registered %v); want node %s, registered %v", when, p, deref(p.Registered), testHostUUID, want)
		}
		if st := s.a.Status(ctx); st.Registered != want {
			t.Fatalf("%s: agent status says registered %v, want %v", when, st.Registered, want)
		}
	}
	registered("before registration", false)
	if err := s.a.RegisterOnce(ctx); err != nil {
		t.Fatal(err)
	}
	registered("after registration", true)
	if err := s.a.SyncOnce(ctx); err != nil {
		t.Fatal(err)
	}
	registered("after a sync", true)
	s.srv.setDown(true)
	if err := s.a.SyncOnce(ctx); err == nil {
		t.Fatal("sync with the servers down succeeded")
	}
	registered("servers unreachable (credentials not refused)", true)
	s.srv.setDown(false)
	s.srv.mu.Lock()
	s.srv.registered = "another secret" // the servers hold another secret now
	s.srv.mu.Unlock()
	if err := s.a.SyncOnce(ctx); !RegistrationLost(err) {
		t.Fatalf("sync with refused credentials: %v", err)
	}
	registered("credentials refused", false)
}

// TestRegistrationRefusedIsNotRegistered: a registration the servers refuse
// (a lost secret) leaves the agent unregistered.
func TestRegistrationRefusedIsNotRegistered(t *testing.T) {
	s := newStepped(t, 1, nil)
	s.a.servers = refusingServers{s.srv}
	if err := s.a.RegisterOnce(context.Background()); err == nil {
		t.Fatal("refused registration returned no error")
	}
	if p := s.a.Ping(); p.Registered == nil || *p.Registered {
		t.Fatalf("ping after a refused registration = %+v; want not registered", p)
	}
}

type refusingServers struct{ *scriptedServers }

func (refusingServers) Register(context.Context, api.RegisterRequest) (*api.RegisterResponse, error) {
	return nil, &api.Error{Status: http.StatusForbidden, Message: "node is registered already"}
}

func deref(b *bool) any {
	if b == nil {
		return nil
	}
	return *b
}
