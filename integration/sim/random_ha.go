package sim

import (
	"math/rand/v2"
	"time"
)

// HAProfile is the random profile with automatic HA on: every fault and
// operation of the default profile, the local drain (`chime agent drain`,
// then enable) included since f11 is fixed, ha VMs with random priorities, and per seed one of three set-ups (the
// isolation lease with a watchdog, the fence command, or both), with the
// fence command failing now and then.
var HAProfile = RandomConfig{HA: &HAOptions{}, Only: []string{
	"power", "agent-crash", "freeze", "libvirtd", "isolate", "link", "cut-agent-server", "server-crash", "cut-servers",
	"leader-transfer", "net-faults", "qemu-crash", "clock-jump", "migration-outcome", "outage", "snapshot",
	"stop", "start", "delete", "create", "migrate", "evacuate", "drain-rebuild", "agent-migrate", "agent-drain", "disable",
}}

// haSchedule turns a random schedule into an HA one: its creates become
// create-ha with a drawn priority, the seed draws its set-up, and fence
// failures are added as faults. It draws from its own source (seeded by
// the seed), so the rest of the schedule is the default profile's.
func haSchedule(sc *Schedule, cfg RandomConfig) {
	r := rand.New(rand.NewPCG(sc.Seed, 0x4a))
	ha := &HAOptions{}
	switch r.IntN(3) {
	case 0:
		ha.Lease, ha.Watchdog = 20*time.Second, true
	case 1:
		ha.Fence = true
	default:
		ha.Lease, ha.Watchdog, ha.Fence = 20*time.Second, true, true
	}
	if cfg.HA.Lease != 0 || cfg.HA.Fence {
		*ha = *cfg.HA // a fixed set-up
	}
	sc.HA = ha
	prios := []string{"high", "medium", "low"}
	for i, it := range sc.Items {
		if it.Cmd[0] == "create" && len(it.Cmd) == 2 {
			sc.Items[i].Cmd = []string{"create-ha", it.Cmd[1], prios[r.IntN(len(prios))]}
		}
	}
	if ha.Fence && r.IntN(2) == 0 {
		h := "h" + string(rune('1'+r.IntN(max(sc.Hosts, 1))))
		at := 30*time.Second + time.Duration(r.Int64N(int64(4*time.Minute)))/time.Second*time.Second
		d := 5*time.Second + time.Duration(r.Int64N(int64(2*time.Minute)))/time.Second*time.Second
		sc.Items = append(sc.Items, Item{At: at, Cmd: []string{"fence-fails", h, "on"}}, Item{At: at + d, Cmd: []string{"fence-fails", h, "off"}})
	}
}
