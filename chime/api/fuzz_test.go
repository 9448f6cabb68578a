package api

import (
	"encoding/json"
	"testing"
)

// The API bodies the servers (and agents) decode from the network, each
// decoded and validated: neither may panic, and a body that validates
// must survive a round trip through JSON and validate again.

// fuzzBody decodes data into a fresh value, validates it, and checks the
// round trip of a valid one.
func fuzzBody[T any](t *testing.T, data []byte, validate func(*T) error) {
	var v T
	if err := json.Unmarshal(data, &v); err != nil {
		return
	}
	if err := validate(&v); err != nil {
		if err.Error() == "" {
			t.Fatalf("validation error with no message for %q", data)
		}
		return
	}
	again, err := json.Marshal(&v)
	if err != nil {
		t.Fatalf("a valid body does not encode: %v", err)
	}
	var w T
	if err := json.Unmarshal(again, &w); err != nil {
		t.Fatalf("a valid body's encoding does not decode: %v\n%s", err, again)
	}
	if err := validate(&w); err != nil {
		t.Fatalf("a valid body is invalid after a round trip: %v\n%s", err, again)
	}
}

func FuzzCreateVMRequest(f *testing.F) {
	f.Add([]byte(`{"name":"web","vcpus":2,"memory_mib":1024}`))
	f.Add([]byte(`{"name":"db","vcpus":1,"memory_mib":64,"disks":["/var/lib/chime/db.qcow2"],"ha":true,"labels":{"a":"b"},"group":"g"}`))
	f.Add([]byte(`{"name":"","vcpus":-1}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		fuzzBody(t, data, func(r *CreateVMRequest) error { return r.Validate() })
	})
}

func FuzzRegisterRequest(f *testing.F) {
	f.Add([]byte(`{"id":"8b0f7a52-8f0b-4c4e-9f55-2c1b7a3c2d11","name":"hv1","api_addr":"10.0.0.11:4660","vcpus":16,"memory_mib":65536}`))
	f.Add([]byte(`{"id":"x","name":"rogue","api_addr":"http://169.254.169.254/latest","vcpus":65536}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		fuzzBody(t, data, func(r *RegisterRequest) error { return r.Validate() })
	})
}

func FuzzHeartbeatRequest(f *testing.F) {
	f.Add([]byte(`{"node_id":"8b0f7a52-8f0b-4c4e-9f55-2c1b7a3c2d11","vms":[]}`))
	f.Add([]byte(`{"node_id":"8b0f7a52-8f0b-4c4e-9f55-2c1b7a3c2d11","faults":["kernel"],"vms":[{"vm_id":"v","state":"running","generation":3}],"local_drained":true,"local_drain_id":"d"}`))
	f.Add([]byte(`{"node_id":"n","vms":[{"vm_id":"","generation":18446744073709551615}],"migrations":[{}],"adopted":[{}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		fuzzBody(t, data, func(r *HeartbeatRequest) error { return r.Validate() })
	})
}

func FuzzCreateTokenRequest(f *testing.F) {
	f.Add([]byte(`{"role":"operator","description":"ci"}`))
	f.Add([]byte(`{"role":"root"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		fuzzBody(t, data, func(r *CreateTokenRequest) error { return r.Validate() })
	})
}

func FuzzHAArmRequest(f *testing.F) {
	f.Add([]byte(`{"reason":"maintenance over"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		fuzzBody(t, data, func(r *HAArmRequest) error { return r.Validate() })
	})
}
