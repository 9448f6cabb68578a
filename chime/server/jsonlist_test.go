package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/chime-ha/chime/chime/structs"
)

// ptrMarshaler has a pointer-receiver MarshalJSON, which an encode of a
// slice applies to its (addressable) elements.
type ptrMarshaler struct{ N int }

func (p *ptrMarshaler) MarshalJSON() ([]byte, error) {
	return json.Marshal(map[string]any{"n": p.N, "html": "<&>"})
}

// failing cannot be encoded.
type failing struct{}

func (failing) MarshalJSON() ([]byte, error) { return nil, errors.New("no") }

// encoded is what the API wrote before jsonList: json.Encoder with
// SetIndent("", "  ").
func encoded(t *testing.T, v any) string {
	t.Helper()
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		t.Fatal(err)
	}
	return buf.String()
}

// TestJSONListMatchesEncoder: a list written element by element is byte
// for byte what the whole-list encode wrote (nil, empty, one, several;
// nested, omitted and HTML-escaped fields; pointer-receiver marshalers).
func TestJSONListMatchesEncoder(t *testing.T) {
	at := time.Date(2026, 12, 3, 7, 0, 0, 123, time.UTC)
	vm := structs.VM{ID: "a1", Name: "web<1>&", DesiredState: structs.StateRunning, NodeID: "n1", Generation: 7,
		State: structs.StateRunning, Spec: structs.VMSpec{VCPUs: 2, MemoryMiB: 512, Disks: []string{"/s/a.qcow2"}, HA: true,
			Labels: map[string]string{"b": "2", "a": "1"}},
		Observed: &structs.Observation{NodeID: "n1", State: "running", Reason: "booted", Generation: 7, At: at}}
	node := structs.Node{ID: "n1", Name: "host-1", APIAddr: "10.0.0.1:4647", VCPUs: 16, MemoryMiB: 65536,
		Labels: map[string]string{"rack": "r1"}}
	for _, tc := range []struct {
		name string
		list indentedWriter
		want any
	}{
		{"nil VMs", jsonList[structs.VM](nil), []structs.VM(nil)},
		{"no VMs", jsonList[structs.VM]{}, []structs.VM{}},
		{"one VM", jsonList[structs.VM]{vm}, []structs.VM{vm}},
		{"three VMs", jsonList[structs.VM]{vm, {ID: "b2", Name: "b"}, vm}, []structs.VM{vm, {ID: "b2", Name: "b"}, vm}},
		{"nodes", jsonList[structs.Node]{node, {}}, []structs.Node{node, {}}},
		{"pointer marshalers", jsonList[ptrMarshaler]{{1}, {2}}, []ptrMarshaler{{1}, {2}}},
		{"strings", jsonList[string]{"a", "<b>"}, []string{"a", "<b>"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			if err := tc.list.writeIndented(&buf); err != nil {
				t.Fatal(err)
			}
			if want := encoded(t, tc.want); buf.String() != want {
				t.Fatalf("written:\n%s\nencoder:\n%s", buf.String(), want)
			}
		})
	}
	var buf bytes.Buffer
	err := jsonList[failing]{{}, {}}.writeIndented(&buf)
	if err == nil || !strings.Contains(err.Error(), "element 0") {
		t.Fatalf("an element that cannot be encoded: %v", err)
	}
}
