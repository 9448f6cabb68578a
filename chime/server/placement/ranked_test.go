package placement

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"testing"

	"github.com/google/uuid"

	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/fsm"
	"github.com/chime-ha/chime/fsm/fsmtest"
	"github.com/chime-ha/chime/scheduler"
)

// TestRankedPlacementMatchesScoringEveryNode drives a real FSM through
// random registrations, creates, moves, deletes, drains and monitor
// transitions over nodes of a few shapes, and after each step asks both
// ways for a node for a random new VM: from the view's free-capacity
// index (PlaceFit) and by scoring every node (placeFitAll). They must
// agree on the node, the capacity compare-and-set and whether any fits,
// under both strategies and with CPU overcommit.
func TestRankedPlacementMatchesScoringEveryNode(t *testing.T) {
	opts := []scheduler.Options{{}, {Strategy: scheduler.Binpack}, {CPUOvercommit: 1.5}, {Strategy: scheduler.Binpack, CPUOvercommit: 2}}
	for seed := uint64(1); seed <= 6; seed++ {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 14))
			w := fsmtest.New(t)
			placers := make([]*Placer, len(opts))
			for i, o := range opts {
				placers[i] = New(Config{State: w.FSM, Proposer: w.Direct, Options: o})
			}
			shapes := [][2]int{{4, 8192}, {8, 16384}, {2, 8192}}
			var nodes, vms []string
			groups := []string{"", "", "db", "web"}
			newVM := func() structs.VM {
				return structs.VM{ID: uuid.NewString(), Name: fmt.Sprintf("vm%03d-%d", rng.IntN(1000), len(vms)), DesiredState: structs.DesiredRunning,
					Spec: structs.VMSpec{VCPUs: 1 + rng.IntN(3), MemoryMiB: 512 * (1 + rng.IntN(6)), AntiAffinity: groups[rng.IntN(len(groups))]}}
			}
			refused := 0
			propose := func(typ fsm.CommandType, payload any) {
				if _, err := w.Direct.Propose(context.Background(), "", typ, payload); err != nil {
					refused++ // a refused command changes nothing
				}
			}
			agreed, none, rebuilt := 0, 0, 0
			for step := 0; step < 600; step++ {
				switch r := rng.IntN(10); {
				case (r < 1 && len(nodes) < 25) || len(nodes) < 3:
					sh := shapes[rng.IntN(len(shapes))]
					id := uuid.NewString()
					propose(fsm.CmdRegisterNode, fsm.RegisterNode{Node: structs.Node{ID: id,
						Name: fmt.Sprintf("hv%02d", 99-len(nodes)), VCPUs: sh[0], MemoryMiB: sh[1]}})
					nodes = append(nodes, id)
				case r < 6:
					vm := newVM()
					to := nodes[rng.IntN(len(nodes))]
					if rng.IntN(4) == 0 {
						to = "" // pending
					}
					propose(fsm.CmdCreateVM, fsm.CreateVM{VM: vm, NodeID: to})
					vms = append(vms, vm.ID)
				case r < 7 && len(vms) > 0:
					propose(fsm.CmdPlaceVM, fsm.PlaceVM{VMID: vms[rng.IntN(len(vms))], NodeID: nodes[rng.IntN(len(nodes))]})
				case r < 8 && len(vms) > 0:
					i := rng.IntN(len(vms))
					propose(fsm.CmdDeleteVM, fsm.DeleteVM{VMID: vms[i]})
					vms = append(vms[:i], vms[i+1:]...)
				case r < 9:
					st := []string{structs.NodeEnabled, structs.NodeDisabled}[rng.IntN(2)]
					propose(fsm.CmdSetManagement, fsm.SetManagement{NodeID: nodes[rng.IntN(len(nodes))], State: st})
				default:
					st := []string{structs.MonitorNormal, structs.MonitorUnreachable}[rng.IntN(2)]
					propose(fsm.CmdSetMonitor, fsm.SetMonitor{NodeID: nodes[rng.IntN(len(nodes))], State: st})
				}
				vm := newVM()
				var exclude []string
				if rng.IntN(3) == 0 {
					exclude = []string{nodes[rng.IntN(len(nodes))]}
				}
				for i, p := range placers {
					// The index alone (PlaceFit falls back to scoring every
					// node when it finds nothing, which would hide a miss).
					walk := func(binpack bool, memMiB int64, visit func(*structs.Node, *structs.NodeUsage) bool) bool {
						return w.FSM.Ranked(vm.ID, exclude, binpack, memMiB, visit)
					}
					got, gotCap, ok := scheduler.PlaceRanked(walk, scheduler.Request{VM: vm, Exclude: exclude}, opts[i])
					want, wantFit, wantErr := p.placeFitAll(vm, exclude)
					if ok != (wantErr == nil) || got != want || (ok && gotCap != wantFit.VCPUs) {
						t.Fatalf("step %d, options %+v, vm %+v exclude %v: the index says %q (%d vCPUs, found %v); scoring every node says %q %+v %v",
							step, opts[i], vm.Spec, exclude, got, gotCap, ok, want, wantFit, wantErr)
					}
					if id, fit, err := p.PlaceFit(vm, exclude); id != want || (err == nil) != (wantErr == nil) || (fit != nil && *fit != *wantFit) {
						t.Fatalf("step %d: PlaceFit says %q %+v %v, want %q %+v %v", step, id, fit, err, want, wantFit, wantErr)
					}
					// A rebuild of a random node: its VMs placed elsewhere,
					// each decision seeing the ones before it.
					from := nodes[rng.IntN(len(nodes))]
					onNode, _, err := w.FSM.VMsOnNode(from)
					if err != nil {
						t.Fatal(err)
					}
					var reqs []scheduler.Request
					for _, v := range onNode {
						reqs = append(reqs, scheduler.Request{VM: v, Exclude: []string{from}})
					}
					reqs = append(reqs, scheduler.Request{VM: vm, Exclude: []string{from}})
					gotAll, ok := p.placeAllRanked(reqs)
					wantAll, _ := p.placeAllScored(reqs)
					if !ok || !maps.Equal(gotAll, wantAll) {
						t.Fatalf("step %d, options %+v: rebuild of %s (%d VMs): the index says %v (answered %v); scoring every node says %v",
							step, opts[i], from, len(reqs), gotAll, ok, wantAll)
					}
					rebuilt += len(wantAll)
					if wantErr != nil {
						none++
					} else {
						agreed++
					}
				}
			}
			t.Logf("%d placements agreed, %d with no node fitting, %d VMs rebuilt alike; %d nodes, %d VMs, %d commands refused", agreed, none, rebuilt, len(nodes), len(vms), refused)
			if none == 0 || agreed < 100 {
				t.Fatalf("the walk never filled the nodes (%d with no node fitting, %d placed): tune it", none, agreed)
			}
		})
	}
}
