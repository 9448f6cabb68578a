package server

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/chime/tlsconf"
	"github.com/chime-ha/chime/integration/wait"

	"github.com/google/uuid"

	"github.com/chime-ha/chime/chime/api"
)

// fakeAgent is the servers' side of an agent, driven by the test: it
// registers, reports what it runs, and answers migration orders. (The real
// agent against real libvirt is tested in integration/.)
type fakeAgent struct {
	c  *api.Client
	id string
}

// newFakeAgent registers name through c (an agent's client) and
// heartbeats through it from then on.
func newFakeAgent(t *testing.T, c *api.Client, name string) *fakeAgent {
	t.Helper()
	id := uuid.NewString()
	r, err := c.Register(context.Background(), api.RegisterRequest{ID: id, Name: name, APIAddr: "127.0.0.1:1",
		MigrationURI: "qemu+tcp://127.0.0.1/system", MigrationAddr: "127.0.0.1", VCPUs: 8, MemoryMiB: 8192})
	if err != nil {
		t.Fatal(err)
	}
	c.Node, c.Secret = r.NodeID, r.Secret
	return &fakeAgent{c: c, id: id}
}

// report heartbeats the VMs it was told to run, as running.
func (a *fakeAgent) report(ctx context.Context) (*api.DesiredState, error) {
	d, err := a.c.Desired(ctx, api.QueryOptions{})
	if err != nil {
		return nil, err
	}
	hb := api.HeartbeatRequest{NodeID: a.id, VMs: []structs.VMObservation{}}
	for _, vm := range d.VMs {
		hb.VMs = append(hb.VMs, structs.VMObservation{VMID: vm.ID, State: structs.StateRunning, Reason: "booted", Generation: vm.Generation})
	}
	_, err = a.c.Heartbeat(ctx, hb)
	return d, err
}

// TestTaskResumedByNewLeader starts an evacuation, kills the leader while
// the migration order is in flight, and checks that the new leader finishes
// the task from the replicated state.
func TestTaskResumedByNewLeader(t *testing.T) {
	tc := newTestCluster(t, 3)
	tc.leader(30 * time.Second)
	addrs := tc.urls()
	ctx := context.Background()
	src := newFakeAgent(t, tc.clientOf(tlsconf.RoleAgent, addrs...), "src")
	admin := tc.clientOf(tlsconf.RoleCLI, addrs...)
	vm, err := admin.CreateVM(ctx, api.CreateVMRequest{Name: "web", VCPUs: 1, Memory: 64})
	if err != nil || vm.NodeID != src.id {
		t.Fatalf("create: %+v %v", vm, err)
	}
	if _, err := src.report(ctx); err != nil {
		t.Fatal(err)
	}
	wait.For(t, 10*time.Second, "vm web running", func() (bool, string) {
		got, _ := admin.GetVM(ctx, "web")
		if got.State != structs.StateRunning {
			return false, got.State
		}
		return true, ""
	})
	dst := newFakeAgent(t, tc.clientOf(tlsconf.RoleAgent, addrs...), "dst")
	task, err := admin.NodeTask(ctx, "src", "evacuate", nil)
	if err != nil {
		t.Fatal(err)
	}
	// Wait for the order to reach the source, and for the destination to be
	// told the VM is incoming.
	var order *api.MigrationOrder
	wait.For(t, 15*time.Second, "migration ordered to the source", func() (bool, string) {
		d, err := src.c.Desired(ctx, api.QueryOptions{})
		if err != nil || len(d.VMs) != 1 || d.VMs[0].Migrate == nil {
			return false, fmt.Sprintf("source desired: %+v %v", d, err)
		}
		order = d.VMs[0].Migrate
		in, err := dst.c.Desired(ctx, api.QueryOptions{})
		if err != nil || len(in.Incoming) != 1 {
			return false, fmt.Sprintf("destination desired: %+v %v", in, err)
		}
		return true, ""
	})
	if order.ToNodeID != dst.id || order.TaskID != task.ID || order.MigrateURI != "tcp://127.0.0.1" {
		t.Fatalf("order %+v", order)
	}
	// The leader dies with the task running.
	l := tc.leader(5 * time.Second)
	tc.srv[l].Kill()
	tc.srv[l] = nil
	tc.leader(30 * time.Second)
	// The source reports success to whoever leads now.
	if err := src.c.ReportMigration(ctx, api.MigrationReport{TaskID: order.TaskID, VMID: vm.ID, Generation: vm.Generation, OK: true}); err != nil {
		t.Fatal(err)
	}
	wait.For(t, 30*time.Second, "migrate task succeeded", func() (bool, string) {
		got, err := admin.GetTask(ctx, task.ID)
		if err != nil || got.State != structs.TaskSucceeded {
			return false, fmt.Sprintf("task %+v %v", got, err)
		}
		return true, ""
	})
	got, _ := admin.GetVM(ctx, "web")
	if got.NodeID != dst.id || got.Generation <= vm.Generation || got.AdoptGeneration != vm.Generation || got.Migration != nil {
		t.Fatalf("after the resumed task: node %s generation %d adopt %d migration %v", got.NodeID, got.Generation, got.AdoptGeneration, got.Migration)
	}
	// The destination's desired state now holds it, with the adopt generation.
	d, err := dst.c.Desired(ctx, api.QueryOptions{})
	if err != nil || len(d.VMs) != 1 || d.VMs[0].AdoptGeneration != vm.Generation || len(d.Incoming) != 0 {
		t.Fatalf("destination desired after migration: %+v %v", d, err)
	}
}

// TestTaskBlockingQuery: GET /v1/tasks and /v1/tasks/{id} with ?index=
// wait until a task write passes the index, and not before: a node
// registered meanwhile (another table) does not wake them, a drain's task does. Bad
// index or wait values are a 400 naming the field.
func TestTaskBlockingQuery(t *testing.T) {
	_, base := devServer(t)
	c := api.NewClient(base)
	ctx := context.Background()
	hv1 := registerNode(t, c, "hv1")
	list, idx, err := c.ListTasks(ctx, api.QueryOptions{})
	if err != nil || len(list) != 0 || idx != 1 {
		t.Fatalf("tasks of a new cluster: %+v index %d %v, want none at index 1", list, idx, err)
	}

	type answer struct {
		list []structs.Task
		idx  uint64
		err  error
		at   time.Duration
	}
	began := time.Now()
	got := make(chan answer, 1)
	go func() {
		l, i, err := c.ListTasks(ctx, api.QueryOptions{Index: idx, Wait: 30 * time.Second})
		got <- answer{l, i, err, time.Since(began)}
	}()
	// Not before: an unrelated write (another node) leaves it waiting.
	registerNode(t, c, "hv2")
	select {
	case a := <-got:
		t.Fatalf("the blocking task query answered after %s with no task write: %d tasks index %d %v", a.at, len(a.list), a.idx, a.err)
	case <-time.After(time.Second):
	}
	changed := time.Now()
	task, err := c.NodeTask(ctx, hv1.NodeID, "drain", nil)
	if err != nil {
		t.Fatalf("drain hv1: %v", err)
	}
	select {
	case a := <-got:
		if a.err != nil || a.idx <= idx || len(a.list) == 0 || a.list[0].ID != task.ID {
			t.Fatalf("the blocking task query woke with %+v index %d %v, want the drain task %s past index %d", a.list, a.idx, a.err, task.ID, idx)
		}
		t.Logf("the blocking task query answered %s after the drain (waited %s in all)", time.Since(changed).Round(time.Millisecond), a.at.Round(time.Millisecond))
		idx = a.idx
	case <-time.After(10 * time.Second):
		t.Fatal("the blocking task query did not answer within 10s of the drain")
	}

	// One task: it waits for its wait when nothing changes, then answers
	// with the same index.
	wait.For(t, 20*time.Second, "the drain task done", func() (bool, string) {
		tk, _, err := c.WatchTask(ctx, task.ID, api.QueryOptions{})
		return err == nil && tk.State == structs.TaskSucceeded, fmt.Sprintf("%+v %v", tk, err)
	})
	_, idx, err = c.ListTasks(ctx, api.QueryOptions{})
	if err != nil {
		t.Fatal(err)
	}
	began = time.Now()
	tk, idx2, err := c.WatchTask(ctx, task.ID[:8], api.QueryOptions{Index: idx, Wait: 500 * time.Millisecond})
	if err != nil || tk.ID != task.ID || idx2 != idx || time.Since(began) < 400*time.Millisecond {
		t.Fatalf("blocking query on an unchanged task: %+v index %d (want %d) after %s, %v; want it to wait 500ms", tk, idx2, idx, time.Since(began), err)
	}

	for _, tc := range []struct{ path, field string }{
		{"/v1/tasks?index=x", "index"},
		{"/v1/tasks?index=-1", "index"},
		{"/v1/tasks?index=1&wait=forever", "wait"},
		{"/v1/tasks?index=1&wait=-1s", "wait"},
		{"/v1/tasks/" + task.ID + "?index=x", "index"},
		{"/v1/tasks/" + task.ID + "?index=1&wait=soon", "wait"},
	} {
		resp, err := http.Get(base + tc.path)
		if err != nil {
			t.Fatal(err)
		}
		var e api.Error
		derr := json.NewDecoder(resp.Body).Decode(&e)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest || derr != nil || e.Field != tc.field {
			t.Errorf("GET %s: %d field %q (%s, %v), want 400 naming %s", tc.path, resp.StatusCode, e.Field, e.Message, derr, tc.field)
		}
	}
}
