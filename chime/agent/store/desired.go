package store

import (
	"encoding/json"
	"fmt"

	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/hypervisor"
	bolt "go.etcd.io/bbolt"
)

// Desired returns the last desired state persisted, or nil when none.
func (s *Store) Desired() (*api.DesiredState, error) {
	v, err := s.getMeta(keyDesired)
	if err != nil || v == nil {
		return nil, err
	}
	var ds api.DesiredState
	if err := json.Unmarshal(v, &ds); err != nil {
		return nil, fmt.Errorf("decode persisted desired state: %w", err)
	}
	return &ds, nil
}

// AcceptDesired applies the fencing rule to a desired state from the
// servers and persists the result, in one transaction. A VM whose generation
// is older than the highest generation this agent has seen for it is
// refused: the previously persisted entry for it is kept when it carries that
// generation, otherwise the VM is left out and reported in hold so that the
// reconciler leaves its domain alone. Every accepted generation raises the
// VM's high-water mark.
func (s *Store) AcceptDesired(in api.DesiredState) (accepted api.DesiredState, refused []api.DesiredVM, hold []string, err error) {
	err = s.db.Update(func(tx *bolt.Tx) error {
		meta, gens := tx.Bucket(bucketMeta), tx.Bucket(bucketGenerations)
		prev := map[string]api.DesiredVM{}
		if v := meta.Get(keyDesired); v != nil {
			var old api.DesiredState
			if err := json.Unmarshal(v, &old); err == nil {
				for _, vm := range old.VMs {
					prev[vm.ID] = vm
				}
			}
		}
		accepted = in
		accepted.VMs = make([]api.DesiredVM, 0, len(in.VMs))
		for _, vm := range in.VMs {
			seen := decodeUint(gens.Get([]byte(vm.ID)))
			if vm.Generation < seen {
				refused = append(refused, vm)
				if p, ok := prev[vm.ID]; ok && p.Generation == seen {
					accepted.VMs = append(accepted.VMs, p)
				} else {
					hold = append(hold, vm.ID)
				}
				continue
			}
			if vm.Generation > seen {
				if err := gens.Put([]byte(vm.ID), encodeUint(vm.Generation)); err != nil {
					return err
				}
			}
			accepted.VMs = append(accepted.VMs, vm)
		}
		data, err := json.Marshal(accepted)
		if err != nil {
			return err
		}
		return meta.Put(keyDesired, data)
	})
	if err != nil {
		return api.DesiredState{}, nil, nil, fmt.Errorf("persist desired state: %w", err)
	}
	return accepted, refused, hold, nil
}

// SeenGeneration returns the highest generation seen for a VM (0: none).
func (s *Store) SeenGeneration(vmID string) (uint64, error) {
	var g uint64
	err := s.db.View(func(tx *bolt.Tx) error {
		g = decodeUint(tx.Bucket(bucketGenerations).Get([]byte(vmID)))
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("read seen generation of %s: %w", vmID, err)
	}
	return g, nil
}

// DefinedSpecs returns the spec last defined in libvirt per VM id.
func (s *Store) DefinedSpecs() (map[string]hypervisor.DomainSpec, error) {
	out := map[string]hypervisor.DomainSpec{}
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketDefined).ForEach(func(k, v []byte) error {
			var spec hypervisor.DomainSpec
			if err := json.Unmarshal(v, &spec); err != nil {
				return fmt.Errorf("decode defined spec of %s: %w", k, err)
			}
			out[string(k)] = spec
			return nil
		})
	})
	return out, err
}

// SetDefined records the spec just defined in libvirt.
func (s *Store) SetDefined(spec hypervisor.DomainSpec) error {
	data, err := json.Marshal(spec)
	if err != nil {
		return err
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketDefined).Put([]byte(spec.VMID), data)
	})
}

// ForgetDefined drops the record of a VM's defined spec (after undefine).
func (s *Store) ForgetDefined(vmID string) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketDefined).Delete([]byte(vmID))
	})
}
