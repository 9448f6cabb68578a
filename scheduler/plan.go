package scheduler

import (
	"cmp"
	"fmt"
	"slices"

	"github.com/chime-ha/chime/chime/structs"
)

// Plan is the failover plan: for every protected VM (in name order),
// where it would be restarted if its node failed now, with the nodes
// already unreachable counted as failed too. Each node's failure is
// placed on its own, with PlaceAll in RestartOrder, as the recovery would
// do. res is the reservation over the same input (Reserve), which decides
// whether each entry is safe. The answer depends only on the input values.
func Plan(nodes []structs.Node, vms []structs.VM, opt Options, res structs.HAReservation) []structs.FailoverEntry {
	names := map[string]string{}
	var failed []string
	for _, n := range nodes {
		names[n.ID] = n.Name
		if n.MonitorState == structs.MonitorUnreachable {
			failed = append(failed, n.ID)
		}
	}
	slices.Sort(failed)
	byNode := map[string][]structs.VM{}
	var hosts []string
	for _, v := range vms {
		if !Protected(&v) {
			continue
		}
		if _, ok := byNode[v.NodeID]; !ok {
			hosts = append(hosts, v.NodeID)
		}
		byNode[v.NodeID] = append(byNode[v.NodeID], v)
	}
	slices.Sort(hosts)
	fo := newFailover(nodes, UsageOf(vms), byNode, nil, opt)
	var out []structs.FailoverEntry
	for _, host := range hosts {
		down := slices.Clone(failed)
		if !slices.Contains(down, host) {
			down = append(down, host)
		}
		// Orphans (a node that is gone) are placed with their "node" as
		// if it were down: it is not in the node list.
		placed, _, _, _ := fo.after(down)
		for _, v := range byNode[host] {
			e := structs.FailoverEntry{VMID: v.ID, VMName: v.Name, NodeID: host, NodeName: names[host]}
			if to, ok := placed[v.ID]; ok {
				e.Target, e.TargetName = to, names[to]
				e.Safe = res.OK
				e.Reason = fmt.Sprintf("restart on %s", names[to])
				if !res.OK {
					e.Reason += "; unsafe: the HA reservation is broken (" + res.Reason + ")"
				}
			} else {
				e.Reason = fmt.Sprintf("no node could take it if %s failed", orName(names[host], host))
			}
			out = append(out, e)
		}
	}
	slices.SortFunc(out, func(a, b structs.FailoverEntry) int {
		return cmp.Or(cmp.Compare(a.VMName, b.VMName), cmp.Compare(a.VMID, b.VMID))
	})
	return out
}

func orName(name, id string) string {
	if name == "" {
		return "node " + id
	}
	return name
}
