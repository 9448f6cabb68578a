package cli

import (
	"fmt"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/chime/structs"
)

// haCommand is `chime operator ha`: the cluster-wide switch of automatic
// HA, the mass-failure brake and the HA reservation.
func haCommand() *cli.Command {
	set := func(name string, armed bool, usage string) *cli.Command {
		return &cli.Command{
			Name: name, Usage: usage,
			Flags: append(append(clientFlags(), outputFlag()), &cli.StringFlag{Name: "reason", Usage: "why (recorded in the event log)"}),
			Action: func(c *cli.Context) error {
				if _, err := output(c); err != nil {
					return err
				}
				if c.NArg() > 0 {
					return fmt.Errorf("unexpected argument %q (flags only)", c.Args().First())
				}
				st, err := newClient(c).SetHAArmed(c.Context, armed, c.String("reason"))
				if err != nil {
					return err
				}
				return showHAStatus(c, st)
			},
		}
	}
	return &cli.Command{
		Name:  "ha",
		Usage: "automatic HA: status, arm, disarm (cluster-wide)",
		Description: `Automatic HA restarts ha VMs of failed nodes elsewhere. 'disarm' pauses it cluster-wide
(planned maintenance of the whole cluster); 'arm' resumes it, releases an engaged mass-failure
brake, and acknowledges the nodes unreachable now (the brake engages again only if more fail).`,
		Subcommands: []*cli.Command{
			{
				Name: "status", Usage: "show whether automatic HA may act, the brake and the HA reservation",
				Flags: append(clientFlags(), outputFlag()),
				Action: func(c *cli.Context) error {
					if _, err := output(c); err != nil {
						return err
					}
					st, err := newClient(c).HAStatus(c.Context)
					if err != nil {
						return err
					}
					return showHAStatus(c, st)
				},
			},
			set("disarm", false, "pause automatic HA cluster-wide (planned maintenance)"),
			set("arm", true, "resume automatic HA; releases the mass-failure brake"),
		},
	}
}

func showHAStatus(c *cli.Context, st *api.HAStatus) error {
	if c.String("output") == "json" {
		return printJSON(st)
	}
	sw := st.Switch
	state := "armed"
	if !st.Armed {
		state = "paused: " + st.Reason
	}
	brake := "released"
	if sw.Brake {
		brake = fmt.Sprintf("ENGAGED since %s (%d of %d nodes unreachable)", sw.BrakeSince.Format(time.RFC3339), sw.BrakeUnreachable, sw.BrakeNodes)
	} else if !sw.BrakeReleasedAt.IsZero() {
		brake = fmt.Sprintf("released %s (%s)", sw.BrakeReleasedAt.Format(time.RFC3339), sw.BrakeReleaseCause)
	}
	operator := "armed"
	if sw.Disarmed {
		operator = fmt.Sprintf("disarmed since %s: %s", sw.DisarmedAt.Format(time.RFC3339), dash(sw.DisarmReason))
	}
	pairs := [][2]string{
		{"Automatic HA", state}, {"Operator", operator}, {"Brake", brake},
		{"Brake share", fmt.Sprintf("engages above %g%% unreachable, releases at %g%% or less", st.BrakeShare*100, st.BrakeShare*50)},
		{"Unreachable", fmt.Sprintf("%d of %d nodes (drained nodes not counted)", st.Unreachable, st.Counted)},
	}
	if sw.AckUnreachable > 0 {
		pairs = append(pairs, [2]string{"Acknowledged", fmt.Sprintf("%d unreachable nodes (by the last arm)", sw.AckUnreachable)})
	}
	if r := st.Reservation; r != nil {
		pairs = append(pairs, [2]string{"HA reservation", reservationLine(r)})
	}
	return kv(pairs)
}

// reservationLine sums up the HA reservation in one line.
func reservationLine(r *structs.HAReservation) string {
	verdict := "ok"
	if !r.OK {
		verdict = "BROKEN"
	}
	noun := "failures"
	if r.Tolerate == 1 {
		noun = "failure"
	}
	return fmt.Sprintf("%s (tolerates %d node %s): %s", verdict, r.Tolerate, noun, r.Reason)
}

// spare is a node's spare capacity beyond the HA reservation, for
// `node list`: "-" for a node that takes no restarted VMs.
func spare(r *structs.HAReservation, nodeID string) (string, string) {
	if r == nil {
		return "-", "-"
	}
	for _, n := range r.Nodes {
		if n.NodeID == nodeID {
			if !n.Receiver {
				return "-", "-"
			}
			return fmt.Sprintf("%d/%d", n.SpareVCPUs, n.ReservedVCPUs), fmt.Sprintf("%d/%d", n.SpareMemoryMiB, n.ReservedMemoryMiB)
		}
	}
	return "-", "-"
}

// failoverLines describes plan entries for `vm show` and `node show`.
func failoverLines(entries []structs.FailoverEntry, withVM bool) string {
	var out []string
	for _, e := range entries {
		s := ""
		if withVM {
			s = e.VMName + " → "
		}
		if e.Target != "" {
			s += e.TargetName
			if e.Safe {
				s += " (safe)"
			} else {
				s += " (unsafe: HA reservation broken)"
			}
		} else {
			s += "none: " + e.Reason
		}
		out = append(out, s)
	}
	return strings.Join(out, "; ")
}
