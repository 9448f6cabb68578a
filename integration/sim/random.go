package sim

import (
	"fmt"
	"math/rand/v2"
	"sort"
	"time"
)

// Random schedules: a seed → a schedule of faults and operations. The
// schedule is a pure function of the seed (its own generator, apart from
// the run's), so that a failing seed's schedule can be printed, shrunk and
// replayed.

// RandomConfig shapes the random schedules.
type RandomConfig struct {
	Hosts    int           // default 3
	VMs      int           // created at the start; default 4
	Chaos    time.Duration // how long faults and operations are drawn; default 5 min
	Faults   int           // faults drawn (each with its undo); default 6
	Ops      int           // operations drawn; default 6
	Quiet    time.Duration // default 4 min
	MaxFault time.Duration // longest a fault lasts before its undo; default 3 min
}

func (c *RandomConfig) defaults() {
	if c.Hosts == 0 {
		c.Hosts = 3
	}
	if c.VMs == 0 {
		c.VMs = 4
	}
	if c.Chaos == 0 {
		c.Chaos = 5 * time.Minute
	}
	if c.Faults == 0 {
		c.Faults = 6
	}
	if c.Ops == 0 {
		c.Ops = 6
	}
	if c.Quiet == 0 {
		c.Quiet = 4 * time.Minute
	}
	if c.MaxFault == 0 {
		c.MaxFault = 3 * time.Minute
	}
}

// faultKind draws one fault and returns it with its undo (nil: none).
type faultKind struct {
	weight int
	make   func(g *gen) (do, undo []string)
}

type gen struct {
	r     *rand.Rand
	cfg   RandomConfig
	hosts []string
	vms   []string
}

func (g *gen) host() string   { return g.hosts[g.r.IntN(len(g.hosts))] }
func (g *gen) vm() string     { return g.vms[g.r.IntN(len(g.vms))] }
func (g *gen) server() string { return fmt.Sprintf("s%d", 1+g.r.IntN(3)) }
func (g *gen) net() string    { return []string{"mgmt", "biz"}[g.r.IntN(2)] }
func (g *gen) prob(maxP float64) string {
	return fmt.Sprintf("%.2f", g.r.Float64()*maxP)
}

// faultKinds are the faults a random schedule draws from.
var faultKinds = []faultKind{
	{3, func(g *gen) ([]string, []string) {
		h := g.host()
		lose := []string{"power-off", h}
		if g.r.IntN(3) == 0 {
			lose = append(lose, "lose-disk")
		}
		return lose, []string{"power-on", h}
	}},
	{3, func(g *gen) ([]string, []string) {
		h := g.host()
		c := []string{"agent-crash", h}
		if g.r.IntN(3) == 0 {
			c = append(c, "lose-state")
		}
		return c, []string{"agent-restart", h}
	}},
	{2, func(g *gen) ([]string, []string) { h := g.host(); return []string{"freeze", h}, []string{"thaw", h} }},
	{2, func(g *gen) ([]string, []string) {
		h := g.host()
		return []string{"libvirtd-down", h}, []string{"libvirtd-up", h}
	}},
	{3, func(g *gen) ([]string, []string) {
		h, k := g.host(), g.net()
		return []string{"isolate", h, k}, []string{"rejoin", h, k}
	}},
	{2, func(g *gen) ([]string, []string) {
		h, k := g.host(), g.net()
		return []string{"link-down", h, k}, []string{"link-up", h, k}
	}},
	{2, func(g *gen) ([]string, []string) {
		h, srv := g.host(), g.server()
		a, b := h, srv
		if g.r.IntN(2) == 0 {
			a, b = b, a
		}
		return []string{"cut", a, b, "mgmt", "one-way"}, []string{"restore", a, b, "mgmt", "one-way"}
	}},
	{2, func(g *gen) ([]string, []string) {
		s := g.server()
		return []string{"server-crash", s}, []string{"server-restart", s}
	}},
	{1, func(g *gen) ([]string, []string) {
		a, b := g.server(), g.server()
		if a == b {
			return []string{"leader-transfer"}, nil
		}
		return []string{"cut", a, b, "mgmt"}, []string{"restore", a, b, "mgmt"}
	}},
	{1, func(g *gen) ([]string, []string) { return []string{"leader-transfer"}, nil }},
	{2, func(g *gen) ([]string, []string) {
		k := g.net()
		return []string{"net-faults", k, "loss=" + g.prob(0.3), "answer-loss=" + g.prob(0.3), "delay=" + g.prob(0.2), "dup=" + g.prob(0.2)},
			[]string{"net-faults", k, "loss=0"}
	}},
	{2, func(g *gen) ([]string, []string) { return []string{"qemu-crash", g.vm()}, nil }},
	{1, func(g *gen) ([]string, []string) {
		s := g.server()
		d := time.Duration(g.r.IntN(40)-20) * time.Minute
		return []string{"clock-jump", s, d.String()}, []string{"clock-jump", s, (-d).String()}
	}},
	{1, func(g *gen) ([]string, []string) {
		out := []string{"fails-before", "fails-during", "reply-lost"}[g.r.IntN(3)]
		return []string{"migration-outcome", g.vm(), out}, nil
	}},
	{1, func(g *gen) ([]string, []string) { return []string{"snapshot", g.server()}, nil }},
}

// opKinds are the operator's requests a random schedule draws from.
var opKinds = []struct {
	weight int
	make   func(g *gen) []string
}{
	{2, func(g *gen) []string { return []string{"stop", g.vm()} }},
	{3, func(g *gen) []string { return []string{"start", g.vm()} }},
	{1, func(g *gen) []string { return []string{"delete", g.vm()} }},
	{2, func(g *gen) []string {
		name := fmt.Sprintf("vm%d", len(g.vms)+1)
		g.vms = append(g.vms, name)
		return []string{"create", name}
	}},
}

// RandomSchedule draws the schedule of a seed.
func RandomSchedule(seed uint64, cfg RandomConfig) *Schedule {
	cfg.defaults()
	g := &gen{r: rand.New(rand.NewPCG(seed, 0x5eed)), cfg: cfg}
	for i := 1; i <= cfg.Hosts; i++ {
		g.hosts = append(g.hosts, fmt.Sprintf("h%d", i))
	}
	sc := &Schedule{Seed: seed, Hosts: cfg.Hosts, Quiet: cfg.Quiet}
	for i := 1; i <= cfg.VMs; i++ {
		name := fmt.Sprintf("vm%d", i)
		g.vms = append(g.vms, name)
		sc.Items = append(sc.Items, Item{At: time.Duration(i) * time.Second, Cmd: []string{"create", name}})
	}
	at := func() time.Duration {
		return 30*time.Second + time.Duration(g.r.Int64N(int64(cfg.Chaos)))/time.Second*time.Second
	}
	total := 0
	for _, f := range faultKinds {
		total += f.weight
	}
	for i := 0; i < cfg.Faults; i++ {
		n := g.r.IntN(total)
		k := faultKinds[0]
		for _, f := range faultKinds {
			if n < f.weight {
				k = f
				break
			}
			n -= f.weight
		}
		t := at()
		do, undo := k.make(g)
		sc.Items = append(sc.Items, Item{At: t, Cmd: do})
		if undo != nil {
			d := 5*time.Second + time.Duration(g.r.Int64N(int64(cfg.MaxFault)))/time.Second*time.Second
			sc.Items = append(sc.Items, Item{At: t + d, Cmd: undo})
		}
	}
	opTotal := 0
	for _, o := range opKinds {
		opTotal += o.weight
	}
	for i := 0; i < cfg.Ops; i++ {
		n := g.r.IntN(opTotal)
		for _, o := range opKinds {
			if n < o.weight {
				sc.Items = append(sc.Items, Item{At: at(), Cmd: o.make(g)})
				break
			}
			n -= o.weight
		}
	}
	sort.SliceStable(sc.Items, func(i, j int) bool { return sc.Items[i].At < sc.Items[j].At })
	return sc
}

// Shrink removes items from a failing schedule while a run of it still
// breaks one of the invariants the original broke: chunks first, then
// single items (ddmin). It returns the smallest failing schedule found and
// its result, and stops after maxRuns runs.
func Shrink(sc *Schedule, first *Result, maxRuns int) (*Schedule, *Result, int) {
	want := map[Invariant]bool{}
	for _, v := range first.Violations {
		want[v.Inv] = true
	}
	fails := func(cand *Schedule) *Result {
		res, err := Run(cand, RunOptions{})
		if err != nil {
			return nil
		}
		for _, v := range res.Violations {
			if want[v.Inv] {
				return res
			}
		}
		return nil
	}
	best, bestRes := sc, first
	runs := 0
	for chunk := max(len(best.Items)/2, 1); chunk >= 1 && runs < maxRuns; {
		removed := false
		for start := 0; start < len(best.Items) && runs < maxRuns; {
			cand := *best
			cand.Items = append(append([]Item(nil), best.Items[:start]...), best.Items[min(start+chunk, len(best.Items)):]...)
			runs++
			if res := fails(&cand); res != nil {
				best, bestRes, removed = &cand, res, true
				continue // the same start now names the next chunk
			}
			start += chunk
		}
		if !removed {
			if chunk == 1 {
				break
			}
			chunk /= 2
		}
	}
	return best, bestRes, runs
}
