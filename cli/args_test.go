package cli

import (
	"reflect"
	"testing"
)

func TestInterspersed(t *testing.T) {
	tests := []struct {
		in, want []string
	}{
		{[]string{"chime", "vm", "create", "web", "--vcpus", "1", "--memory", "64"},
			[]string{"chime", "vm", "create", "--vcpus", "1", "--memory", "64", "web"}},
		{[]string{"chime", "vm", "create", "web", "--ha", "--vcpus", "2"},
			[]string{"chime", "vm", "create", "--ha", "--vcpus", "2", "web"}},
		{[]string{"chime", "--log-level", "debug", "vm", "show", "web", "-o", "json"},
			[]string{"chime", "--log-level", "debug", "vm", "show", "-o", "json", "web"}},
		{[]string{"chime", "node", "rebuild", "hv1", "--confirm-fenced"},
			[]string{"chime", "node", "rebuild", "--confirm-fenced", "hv1"}},
		{[]string{"chime", "vm", "create", "--", "-odd"},
			[]string{"chime", "vm", "create", "--", "-odd"}},
		{[]string{"chime", "operator", "raft", "remove-peer", "s1", "--address", "http://x"},
			[]string{"chime", "operator", "raft", "remove-peer", "--address", "http://x", "s1"}},
		{[]string{"chime"}, []string{"chime"}},
	}
	app := App()
	for _, tt := range tests {
		if got := interspersed(app, tt.in); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("interspersed(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
