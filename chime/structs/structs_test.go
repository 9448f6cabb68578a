package structs

import (
	"errors"
	"fmt"
	"testing"
)

func TestObservationCurrent(t *testing.T) {
	vm := VM{NodeID: "n1", Generation: 10, AdoptGeneration: 7}
	tests := []struct {
		name string
		node string
		gen  uint64
		want bool
	}{
		{"placement generation from the placement node", "n1", 10, true},
		{"newer generation", "n1", 11, true},
		{"adopted older generation", "n1", 7, true},
		{"older generation, not adopted", "n1", 9, false},
		{"another node", "n2", 10, false},
	}
	for _, tt := range tests {
		if got := vm.ObservationCurrent(tt.node, tt.gen); got != tt.want {
			t.Errorf("%s: ObservationCurrent(%s, %d) = %v, want %v", tt.name, tt.node, tt.gen, got, tt.want)
		}
	}
	pending := VM{Generation: 0}
	if pending.ObservationCurrent("", 0) {
		t.Error("an unplaced VM has no current observation")
	}
}

func TestDeriveState(t *testing.T) {
	tests := []struct {
		vm   VM
		want string
	}{
		{VM{}, StatePending},
		{VM{NodeID: "n1"}, StateUnknown},
		{VM{NodeID: "n1", Observed: &Observation{NodeID: "n2", State: StateRunning}}, StateUnknown},
		{VM{NodeID: "n1", Observed: &Observation{NodeID: "n1", State: StateCrashed}}, StateCrashed},
	}
	for i, tt := range tests {
		if got := tt.vm.DeriveState(); got != tt.want {
			t.Errorf("case %d: DeriveState = %s, want %s", i, got, tt.want)
		}
	}
}

func TestErrorKindsRoundTripByName(t *testing.T) {
	for _, kind := range []error{ErrNotFound, ErrConflict, ErrInvalid, ErrForbidden, ErrNoLeader} {
		err := fmt.Errorf("wrapped: %w", &Error{Kind: kind, Message: "x"})
		name := KindName(err)
		if name == "" || KindByName(name) != kind {
			t.Errorf("%v: name %q maps back to %v", kind, name, KindByName(name))
		}
		if !errors.Is(err, kind) {
			t.Errorf("%v: errors.Is through the wrap failed", kind)
		}
	}
	if KindName(errors.New("plain")) != "" || KindByName("nonsense") != nil {
		t.Error("a plain error must have no kind, an unknown name no error")
	}
	if e := Invalid("vcpus", "must be %d", 3); e.Field != "vcpus" || e.Message != "vcpus: must be 3" || !errors.Is(e, ErrInvalid) {
		t.Errorf("Invalid = %+v", e)
	}
}

// TestValidateLabelsNamesTheFirstBadKey: with several bad labels the
// refusal names the first in key order, every time (map order is random).
func TestValidateLabelsNamesTheFirstBadKey(t *testing.T) {
	labels := map[string]string{"ok": "v", "zz\n": "v", "bb\n": "v", "mm\n": "v", "cc\x00": "v"}
	want := fmt.Sprintf("labels: label %q: control characters are not allowed", "bb\n")
	for i := 0; i < 50; i++ {
		err := ValidateLabels("labels", labels)
		if err == nil || err.Error() != want {
			t.Fatalf("attempt %d: ValidateLabels = %v, want %q", i, err, want)
		}
	}
}
