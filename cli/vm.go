package cli

import (
	"fmt"
	"strings"
	"time"

	"github.com/chime-ha/chime/chime/structs"

	"github.com/urfave/cli/v2"

	"github.com/chime-ha/chime/chime/api"
)

func vmCommand() *cli.Command {
	idCmd := func(name, usage string, run func(c *cli.Context, cl *api.Client, id string) error) *cli.Command {
		return &cli.Command{Name: name, Usage: usage, ArgsUsage: "ID", Flags: append(clientFlags(), outputFlag()),
			Action: func(c *cli.Context) error {
				if _, err := output(c); err != nil {
					return err
				}
				id, err := oneArg(c, "VM ID")
				if err != nil {
					return err
				}
				return run(c, newClient(c), id)
			}}
	}
	action := func(verb string) func(c *cli.Context, cl *api.Client, id string) error {
		return func(c *cli.Context, cl *api.Client, id string) error {
			vm, err := cl.VMAction(c.Context, id, verb)
			if err != nil {
				return err
			}
			return showVM(c, vm)
		}
	}
	return &cli.Command{
		Name:        "vm",
		Usage:       "create, inspect and operate virtual machines",
		Description: `An ID argument accepts a full uuid, a unique uuid prefix, or the VM's name.`,
		Subcommands: []*cli.Command{
			{
				Name: "create", Usage: "create a VM (placed on a node with room; pending until one fits)", ArgsUsage: "NAME",
				Flags: append(clientFlags(), outputFlag(),
					&cli.IntFlag{Name: "vcpus", Usage: "virtual CPUs (1..256)", Required: true},
					&cli.IntFlag{Name: "memory", Usage: "memory in MiB (at least 16)", Required: true},
					&cli.StringSliceFlag{Name: "disk", Usage: "absolute path of a disk image on shared storage (repeatable)"},
					&cli.BoolFlag{Name: "ha", Usage: "mark the VM highly available"},
					&cli.BoolFlag{Name: "stopped", Usage: "create it stopped"},
					&cli.StringSliceFlag{Name: "label", Usage: "KEY=VALUE label (repeatable)"},
					&cli.StringFlag{Name: "anti-affinity", Usage: "group name: VMs of one group run on different nodes"},
					&cli.StringFlag{Name: "priority", Value: "medium", Usage: "restart priority of an ha VM: high, medium or low (automatic HA restarts higher ones first)"},
				),
				Action: func(c *cli.Context) error {
					if _, err := output(c); err != nil {
						return err
					}
					name, err := oneArg(c, "NAME")
					if err != nil {
						return err
					}
					labels, err := parseLabels(c.StringSlice("label"))
					if err != nil {
						return err
					}
					req := api.CreateVMRequest{Name: name, VCPUs: c.Int("vcpus"), Memory: c.Int("memory"),
						Disks: c.StringSlice("disk"), HA: c.Bool("ha"), Stopped: c.Bool("stopped"), Labels: labels, Group: c.String("anti-affinity"), Priority: c.String("priority")}
					if err := req.Validate(); err != nil {
						return cliField(err)
					}
					vm, err := newClient(c).CreateVM(c.Context, req)
					if err != nil {
						return err
					}
					return showVM(c, vm)
				},
			},
			{
				Name: "list", Usage: "list VMs (all, or those matching every filter given)",
				Flags: append(clientFlags(), outputFlag(), watchFlag(),
					&cli.StringFlag{Name: "node", Usage: "only VMs placed on this node (uuid, unique prefix or name)"},
					&cli.StringFlag{Name: "state", Usage: "only VMs in this state: " + strings.Join(structs.VMStates, ", ")},
					&cli.StringFlag{Name: "desired", Usage: "only VMs of this desired state: running or stopped"},
					&cli.BoolFlag{Name: "ha", Usage: "only ha VMs (--ha=false: only VMs without ha)"}),
				Action: func(c *cli.Context) error {
					o, err := output(c)
					if err != nil {
						return err
					}
					f := api.VMFilter{Node: c.String("node"), State: c.String("state"), Desired: c.String("desired")}
					if c.IsSet("ha") {
						ha := c.Bool("ha")
						f.HA = &ha
					}
					cl := newClient(c)
					return listOrWatch(c, func(q api.QueryOptions) (uint64, func() error, error) {
						vms, idx, err := cl.ListVMsWhere(c.Context, f, q)
						if err != nil {
							return 0, nil, err
						}
						return idx, func() error {
							if o == "json" {
								return printJSON(vms)
							}
							rows := make([][]string, 0, len(vms))
							for _, v := range vms {
								rows = append(rows, []string{short(v.ID), v.Name, v.State, v.DesiredState, short(v.NodeID),
									fmt.Sprint(v.Spec.VCPUs), fmt.Sprint(v.Spec.MemoryMiB), fmt.Sprint(v.Generation)})
							}
							return table([]string{"ID", "NAME", "STATE", "DESIRED", "NODE", "VCPUS", "MEMORY_MIB", "GENERATION"}, rows)
						}, nil
					})
				},
			},
			idCmd("show", "show one VM", func(c *cli.Context, cl *api.Client, id string) error {
				vm, err := cl.GetVM(c.Context, id)
				if err != nil {
					return err
				}
				return showVM(c, vm)
			}),
			idCmd("start", "set a VM's desired state to running", action("start")),
			idCmd("stop", "set a VM's desired state to stopped (graceful shutdown)", action("stop")),
			idCmd("restart", "stop a VM, wait until it is stopped, start it again", action("restart")),
			idCmd("delete", "delete a VM (its domain is removed from its hypervisor)", func(c *cli.Context, cl *api.Client, id string) error {
				if err := cl.DeleteVM(c.Context, id); err != nil {
					return err
				}
				fmt.Fprintf(stdout, "VM %s deleted\n", id)
				return nil
			}),
			{
				Name: "migrate", Usage: "live-migrate a VM to another node", ArgsUsage: "ID",
				Flags: append(clientFlags(), outputFlag(), &cli.StringFlag{Name: "to", Usage: "destination node (default: the scheduler picks)"}),
				Action: func(c *cli.Context) error {
					o, err := output(c)
					if err != nil {
						return err
					}
					id, err := oneArg(c, "VM ID")
					if err != nil {
						return err
					}
					t, err := newClient(c).MigrateVM(c.Context, id, c.String("to"))
					if err != nil {
						return err
					}
					_ = o
					return showTask(c, t)
				},
			},
			{
				Name: "modify", Usage: "change a VM's automatic-HA settings", ArgsUsage: "ID",
				Flags: append(clientFlags(), outputFlag(),
					&cli.BoolFlag{Name: "ha", Usage: "highly available (--ha=false: not)"},
					&cli.StringFlag{Name: "priority", Usage: "restart priority: high, medium or low"}),
				Action: func(c *cli.Context) error {
					if _, err := output(c); err != nil {
						return err
					}
					id, err := oneArg(c, "VM ID")
					if err != nil {
						return err
					}
					var req api.ModifyVMRequest
					if c.IsSet("ha") {
						ha := c.Bool("ha")
						req.HA = &ha
					}
					if c.IsSet("priority") {
						p := c.String("priority")
						req.Priority = &p
					}
					if req.HA == nil && req.Priority == nil {
						return fmt.Errorf("nothing to change: give --ha or --priority")
					}
					vm, err := newClient(c).ModifyVM(c.Context, id, req)
					if err != nil {
						return cliField(err)
					}
					return showVM(c, vm)
				},
			},
		},
	}
}

func showVM(c *cli.Context, vm *structs.VM) error {
	if c.String("output") == "json" {
		return printJSON(vm)
	}
	obs := "-"
	if o := vm.Observed; o != nil {
		obs = fmt.Sprintf("%s (%s) on %s, generation %d, %s", o.State, dash(o.Reason), short(o.NodeID), o.Generation, ago(o.At))
	}
	failover := "-"
	if vm.Spec.HA {
		failover = failoverOf(c, "vms", vm.ID, false)
	}
	return kv([][2]string{
		{"ID", vm.ID}, {"Name", vm.Name}, {"State", vm.State}, {"Desired", vm.DesiredState},
		{"Node", dash(vm.NodeID)}, {"Generation", fmt.Sprint(vm.Generation)},
		{"vCPUs", fmt.Sprint(vm.Spec.VCPUs)}, {"Memory MiB", fmt.Sprint(vm.Spec.MemoryMiB)},
		{"Disks", dash(strings.Join(vm.Spec.Disks, ", "))}, {"HA", fmt.Sprint(vm.Spec.HA)},
		{"Anti-affinity", dash(vm.Spec.AntiAffinity)}, {"Priority", priority(vm.Spec)}, {"Observed", obs}, {"Task", dash(vm.TaskID)}, {"Migration", migration(vm.Migration)},
		{"Node-local", nodeLocal(vm)}, {"Failover", failover},
	})
}

// nodeLocal describes what the servers know of a node-local migration of
// vm whose outcome has not moved its placement (a hold, uniqueness rule 7).
func nodeLocal(vm *structs.VM) string {
	nl := vm.NodeLocal
	switch {
	case nl == nil:
		return "-"
	case !vm.HeldByNodeLocal():
		return fmt.Sprintf("migration to %s (generation %d) failed: not held", short(nl.To), nl.Generation)
	case nl.Outcome == structs.LocalMigrationUnknown:
		return fmt.Sprintf("held: migration to %s (generation %d), outcome unknown", short(nl.To), nl.Generation)
	}
	return fmt.Sprintf("held: migration to %s (generation %d) announced by it, outcome not known yet", short(nl.To), nl.Generation)
}

func parseLabels(in []string) (map[string]string, error) {
	if len(in) == 0 {
		return nil, nil
	}
	out := map[string]string{}
	for _, l := range in {
		k, v, ok := strings.Cut(l, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("--label: %q must be KEY=VALUE", l)
		}
		out[k] = v
	}
	return out, nil
}

// cliField rewrites an API field name into the flag an operator typed.
func cliField(err error) error {
	e := api.AsError(err)
	flag := map[string]string{"name": "NAME", "vcpus": "--vcpus", "memory_mib": "--memory", "disks": "--disk",
		"labels": "--label", "anti_affinity": "--anti-affinity", "priority": "--priority"}[e.Field]
	if flag == "" {
		return err
	}
	return fmt.Errorf("%s: %s", flag, strings.TrimPrefix(e.Message, e.Field+": "))
}

func migration(m *structs.Migration) string {
	if m == nil {
		return "-"
	}
	if m.Outcome == structs.MigrationOutcomeUnknown {
		return fmt.Sprintf("HELD: outcome of the live migration %s → %s unknown since %s (%s); started nowhere until a node proves it runs it (task %s)",
			short(m.From), short(m.To), m.UnknownSince.UTC().Format(time.RFC3339), m.UnknownReason, m.TaskID)
	}
	return fmt.Sprintf("live migration %s → %s in flight (task %s)", short(m.From), short(m.To), m.TaskID)
}

// priority is an ha VM's restart priority as shown ("-" without ha).
func priority(s structs.VMSpec) string {
	if !s.HA {
		return "-"
	}
	if s.Priority == "" {
		return structs.PriorityMedium
	}
	return s.Priority
}
