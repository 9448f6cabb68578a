package cli

import (
	"fmt"
	"strings"

	"github.com/chime-ha/chime/chime/structs"

	"github.com/urfave/cli/v2"

	"github.com/chime-ha/chime/chime/api"
)

func nodeCommand() *cli.Command {
	action := func(name, usage string, extra []cli.Flag, body func(c *cli.Context) any) *cli.Command {
		return nodeOp(name, usage, extra, body, func(c *cli.Context, id string, b any) error {
			n, err := newClient(c).NodeAction(c.Context, id, name, b)
			if err != nil {
				return err
			}
			return showNode(c, n)
		})
	}
	return &cli.Command{
		Name:        "node",
		Usage:       "inspect and operate hypervisor nodes",
		Description: `An ID argument accepts a full uuid, a unique uuid prefix, or the node's name.`,
		Subcommands: []*cli.Command{
			{
				Name: "list", Usage: "list nodes", Flags: append(clientFlags(), outputFlag(), watchFlag()),
				Action: func(c *cli.Context) error {
					o, err := output(c)
					if err != nil {
						return err
					}
					cl := newClient(c)
					return listOrWatch(c, func(q api.QueryOptions) (uint64, func() error, error) {
						nodes, idx, err := cl.ListNodes(c.Context, q)
						if err != nil {
							return 0, nil, err
						}
						if o == "json" {
							return idx, func() error { return printJSON(nodes) }, nil
						}
						vms, _, err := cl.ListVMs(c.Context, api.QueryOptions{})
						if err != nil {
							return 0, nil, err
						}
						// The HA reservation is best effort: an older server has none.
						var res *structs.HAReservation
						if st, err := cl.HAStatus(c.Context); err == nil {
							res = st.Reservation
						}
						return idx, func() error { return printNodes(nodes, vms, res) }, nil
					})
				},
			},
			{
				Name: "show", Usage: "show one node and its VMs", ArgsUsage: "ID", Flags: append(clientFlags(), outputFlag()),
				Action: func(c *cli.Context) error {
					if _, err := output(c); err != nil {
						return err
					}
					id, err := oneArg(c, "node ID")
					if err != nil {
						return err
					}
					n, err := newClient(c).GetNode(c.Context, id)
					if err != nil {
						return err
					}
					return showNode(c, n)
				},
			},
			action("enable", "allow placement again; VMs still placed here start again", nil, nil),
			action("disable", "no new VMs; existing ones are managed normally", nil, nil),
			action("reset-secret", "let the next agent that registers as this node set a new secret (its agent lost its data dir; see the runbook)", nil, nil),
			taskAction("drain", "no new VMs; every VM on the node stopped and kept stopped, even when the node comes back", nil, nil),
			taskAction("evacuate", "live-migrate every VM away (the node is disabled first)", nil, nil),
			taskAction("rebuild", "recreate every VM of a drained node on other nodes (same disks)",
				[]cli.Flag{&cli.BoolFlag{Name: "confirm-fenced", Usage: "the operator confirms the node is powered off / fenced and runs none of its VMs"}},
				func(c *cli.Context) any { return map[string]bool{"confirm_fenced": c.Bool("confirm-fenced")} }),
			nodeOp("fence", "run the servers' fence command (--fence-command) for the node now: power it off; on success its ha VMs restart elsewhere", nil, nil,
				func(c *cli.Context, id string, _ any) error {
					res, err := newClient(c).FenceNode(c.Context, id)
					if err != nil {
						return err
					}
					if o, _ := output(c); o == "json" {
						return printJSON(res)
					}
					fmt.Fprintf(stdout, "node %s fenced\n", res.Node.Name)
					if out := strings.TrimSpace(res.Output); out != "" {
						fmt.Fprintf(stdout, "fence command output:\n%s\n", out)
					}
					return nil
				}),
			{
				Name: "remove", Usage: "remove a node that has no VMs placed on it", ArgsUsage: "ID", Flags: clientFlags(),
				Action: func(c *cli.Context) error {
					id, err := oneArg(c, "node ID")
					if err != nil {
						return err
					}
					if err := newClient(c).RemoveNode(c.Context, id); err != nil {
						return err
					}
					fmt.Fprintf(stdout, "node %s removed\n", id)
					return nil
				},
			},
		},
	}
}

// taskAction is a node operation that answers with a task.
func taskAction(name, usage string, extra []cli.Flag, body func(c *cli.Context) any) *cli.Command {
	return nodeOp(name, usage, extra, body, func(c *cli.Context, id string, b any) error {
		t, err := newClient(c).NodeTask(c.Context, id, name, b)
		if err != nil {
			return err
		}
		return showTask(c, t)
	})
}

// nodeOp is a `chime node NAME ID` command: it checks -o and the one ID
// argument, builds the optional body, and hands over to call.
func nodeOp(name, usage string, extra []cli.Flag, body func(c *cli.Context) any, call func(c *cli.Context, id string, b any) error) *cli.Command {
	return &cli.Command{Name: name, Usage: usage, ArgsUsage: "ID", Flags: append(append(clientFlags(), outputFlag()), extra...),
		Action: func(c *cli.Context) error {
			if _, err := output(c); err != nil {
				return err
			}
			id, err := oneArg(c, "node ID")
			if err != nil {
				return err
			}
			var b any
			if body != nil {
				b = body(c)
			}
			return call(c, id, b)
		}}
}

func showTask(c *cli.Context, t *structs.Task) error {
	if c.String("output") == "json" {
		return printJSON(t)
	}
	if err := kv([][2]string{{"Task", t.ID}, {"Kind", t.Kind}, {"State", t.State}, {"Node", dash(t.NodeID)}, {"Error", dash(t.Error)}}); err != nil {
		return err
	}
	if len(t.Steps) == 0 {
		return nil
	}
	fmt.Fprintln(stdout)
	rows := [][]string{}
	for _, st := range t.Steps {
		rows = append(rows, []string{short(st.VMID), short(st.From), short(st.To), st.State, dash(st.Error)})
	}
	return table([]string{"VM", "FROM", "TO", "STATE", "ERROR"}, rows)
}

func showNode(c *cli.Context, n *structs.Node) error {
	if c.String("output") == "json" {
		return printJSON(n)
	}
	return kv([][2]string{
		{"ID", n.ID}, {"Name", n.Name}, {"Management", n.ManagementState}, {"Monitor", n.MonitorState},
		{"Since", n.StateSince.Format("2006-01-02 15:04:05Z07:00")}, {"Faults", dash(strings.Join(n.Faults, "; "))},
		{"Agent API", dash(n.APIAddr)}, {"Migration URI", dash(n.MigrationURI)},
		{"Capacity", fmt.Sprintf("%d vCPUs, %d MiB", n.VCPUs, n.MemoryMiB)},
		{"Drain acknowledged", fmt.Sprint(n.DrainAcked)}, {"Locally drained", fmt.Sprint(n.LocalDrained)},
		{"Local drain", dash(n.LocalDrainState)},
		{"Fenced", fmt.Sprint(n.Fenced)}, {"Isolation", isolation(n)}, {"Secret reset", fmt.Sprint(n.SecretReset)},
		{"Identity conflict", dash(n.IdentityConflict)}, {"Return refused", dash(n.ReturnRefused)},
		{"Stale copies", dash(staleCopies(n.StaleCopies))}, {"Agent version", dash(n.AgentVersion)},
		{"Failover plan", failoverOf(c, "nodes", n.ID, true)},
	})
}

// failoverOf is the failover plan of a VM or a node for `show`, or why it
// is not available.
func failoverOf(c *cli.Context, kind, id string, withVM bool) string {
	plan, err := newClient(c).Failover(c.Context, kind, id)
	if err != nil {
		return "unavailable: " + err.Error()
	}
	if len(plan.Entries) == 0 {
		if kind == "vms" {
			return "none: not protected now (stopped or pending)"
		}
		return "-"
	}
	return failoverLines(plan.Entries, withVM)
}

// staleCopies describes a node's uniqueness conflicts for `node show`.
func staleCopies(cs []structs.StaleCopy) string {
	var out []string
	for _, c := range cs {
		what := "running"
		switch {
		case c.Destroyed:
			what = "destroyed by the agent"
		case !c.Running():
			what = "gone"
		}
		out = append(out, fmt.Sprintf("%s generation %d (%s; placed on %s generation %d)", short(c.VMID), c.Generation, what, dash(short(c.PlacedOn)), c.PlacedGeneration))
	}
	return strings.Join(out, "; ")
}

// isolation is a node's isolation response as shown: "keep", or "stop
// (lease 30s, stop bound 10s, watchdog)".
func isolation(n *structs.Node) string {
	if n.IsolationResponse != structs.IsolationStop {
		return structs.IsolationKeep
	}
	s := fmt.Sprintf("stop (lease %s, stop bound %s", n.IsolationLease, n.StopBound())
	if n.Watchdog {
		s += ", watchdog"
	} else {
		s += ", no watchdog"
	}
	return s + ")"
}

// printNodes is the table of `chime node list`.
func printNodes(nodes []structs.Node, vms []structs.VM, res *structs.HAReservation) error {
	count := map[string]int{}
	for _, v := range vms {
		count[v.NodeID]++
	}
	rows := make([][]string, 0, len(nodes))
	for _, n := range nodes {
		cpu, mem := spare(res, n.ID)
		rows = append(rows, []string{short(n.ID), n.Name, n.ManagementState, n.MonitorState,
			fmt.Sprint(count[n.ID]), fmt.Sprint(n.VCPUs), fmt.Sprint(n.MemoryMiB), cpu, mem, dash(n.APIAddr), dash(strings.Join(n.Faults, "; "))})
	}
	if err := table([]string{"ID", "NAME", "MANAGEMENT", "MONITOR", "VMS", "VCPUS", "MEMORY_MIB", "SPARE/HA_VCPUS", "SPARE/HA_MIB", "AGENT", "FAULTS"}, rows); err != nil {
		return err
	}
	if res != nil {
		fmt.Fprintf(stdout, "\nHA reservation: %s\n", reservationLine(res))
	}
	return nil
}
