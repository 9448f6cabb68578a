package scheduler

import (
	"fmt"
	"testing"

	"github.com/chime-ha/chime/chime/structs"
)

// BenchmarkReserve prints what one HA reservation check costs (the
// alarmer runs one per pass, admission one per ha create) on clusters of
// n nodes with 20 VMs each, half of them ha.
func BenchmarkReserve(b *testing.B) {
	for _, n := range []int{10, 100, 500} {
		var nodes []structs.Node
		var vms []structs.VM
		for i := range n {
			id := fmt.Sprintf("n%03d", i)
			nodes = append(nodes, node(id, 64, 262144))
			for j := range 20 {
				v := vm(fmt.Sprintf("%s-%02d", id, j), id, 2, 4096)
				v.Spec.HA = j%2 == 0
				vms = append(vms, v)
			}
		}
		b.Run(fmt.Sprintf("nodes=%d/vms=%d/tolerate=1", n, len(vms)), func(b *testing.B) {
			for b.Loop() {
				if r := Reserve(nodes, vms, 1, Options{}); !r.OK {
					b.Fatal(r.Reason)
				}
			}
		})
	}
}
