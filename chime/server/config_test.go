package server

import (
	"errors"
	"math"
	"strings"
	"testing"

	"github.com/chime-ha/chime/chime/structs"
)

// TestConfigHAFlags: the HA flags' bounds, each refusal naming its flag.
func TestConfigHAFlags(t *testing.T) {
	base := DefaultConfig()
	base.Name, base.DataDir, base.Dev = "s1", "/tmp/x", true
	if base.HATolerateFailures != 1 || base.HABrakeShare != 0.5 {
		t.Fatalf("defaults %d %v, want 1 and 0.5", base.HATolerateFailures, base.HABrakeShare)
	}
	cases := []struct {
		name     string
		tolerate int
		share    float64
		flag     string // "" = valid
	}{
		{"defaults", 1, 0.5, ""},
		{"admission off", 0, 0.5, ""},
		{"most", 16, 1, ""},
		{"negative", -1, 0.5, "--ha-tolerate-failures"},
		{"too many", 17, 0.5, "--ha-tolerate-failures"},
		{"share 0", 1, 0, "--ha-brake-share"},
		{"share above 1", 1, 1.5, "--ha-brake-share"},
		{"share NaN", 1, math.NaN(), "--ha-brake-share"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := base
			c.HATolerateFailures, c.HABrakeShare = tc.tolerate, tc.share
			err := c.Validate()
			if tc.flag == "" {
				if err != nil {
					t.Fatalf("valid config refused: %v", err)
				}
				return
			}
			if !errors.Is(err, structs.ErrInvalid) || !strings.Contains(err.Error(), tc.flag) {
				t.Fatalf("%v, want an invalid-input error naming %s", err, tc.flag)
			}
		})
	}
}
