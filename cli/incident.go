package cli

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/chime/structs"
)

func incidentCommand() *cli.Command {
	jsonFlag := &cli.BoolFlag{Name: "json", Usage: "same as -o json"}
	return &cli.Command{
		Name:  "incident",
		Usage: "failures tracked end to end: detection, alarms, actions, recovery, durations (docs/incidents.md)",
		Subcommands: []*cli.Command{
			{
				Name: "list", Usage: "list incidents, newest first",
				Flags: append(clientFlags(), outputFlag(), jsonFlag,
					&cli.StringFlag{Name: "state", Usage: "open or resolved (default: both)"},
					&cli.StringFlag{Name: "node", Usage: "only incidents of this node (id, id prefix or name)"}),
				Action: func(c *cli.Context) error {
					o, err := incidentOutput(c)
					if err != nil {
						return err
					}
					st := c.String("state")
					if !structs.ValidIncidentState(st) {
						return fmt.Errorf("--state: %q must be open or resolved", st)
					}
					list, _, err := newClient(c).Incidents(c.Context, api.IncidentFilter{State: st, Node: c.String("node")}, api.QueryOptions{})
					if err != nil {
						return err
					}
					if o == "json" {
						return printJSON(list)
					}
					rows := [][]string{}
					for _, inc := range list {
						recovered := 0
						for _, v := range inc.VMs {
							if !v.RecoveredAt.IsZero() {
								recovered++
							}
						}
						ttr := "-"
						if inc.State == structs.IncidentResolved {
							ttr = duration(inc.TimeToRecover)
						}
						rows = append(rows, []string{strconv.FormatUint(inc.ID, 10), inc.State, inc.Kind, dash(inc.NodeName),
							fmt.Sprintf("%d/%d", recovered, len(inc.VMs)), ago(inc.DetectedAt), duration(inc.TimeToDetect), ttr, inc.Summary})
					}
					return table([]string{"ID", "STATE", "KIND", "NODE", "VMS", "DETECTED", "TTD", "TTR", "SUMMARY"}, rows)
				},
			},
			{
				Name: "show", Usage: "show one incident: its VMs, durations and timeline", ArgsUsage: "ID",
				Flags: append(clientFlags(), outputFlag(), jsonFlag),
				Action: func(c *cli.Context) error {
					o, err := incidentOutput(c)
					if err != nil {
						return err
					}
					arg, err := oneArg(c, "incident ID")
					if err != nil {
						return err
					}
					id, err := strconv.ParseUint(strings.TrimPrefix(arg, "#"), 10, 64)
					if err != nil || id == 0 {
						return fmt.Errorf("incident ID: %q is not a positive integer", arg)
					}
					inc, err := newClient(c).Incident(c.Context, id)
					if err != nil {
						return err
					}
					if o == "json" {
						return printJSON(inc)
					}
					return showIncident(inc)
				},
			},
		},
	}
}

func incidentOutput(c *cli.Context) (string, error) {
	o, err := output(c)
	if c.Bool("json") {
		return "json", nil
	}
	return o, err
}

// duration prints a duration to the millisecond under ten seconds, else
// to the second.
func duration(d time.Duration) string {
	if d < 10*time.Second {
		return d.Round(time.Millisecond).String()
	}
	return d.Round(time.Second).String()
}

// since prints t relative to the incident's first evidence: "+1m2s".
func since(t, origin time.Time) string {
	d := t.Sub(origin)
	if d < 0 {
		return "-" + duration(-d)
	}
	return "+" + duration(d)
}

func showIncident(inc *structs.Incident) error {
	const layout = "2006-01-02 15:04:05.000Z07:00"
	ttr, resolved := "-", "-"
	if inc.State == structs.IncidentResolved {
		ttr = duration(inc.TimeToRecover)
		resolved = inc.ResolvedAt.Format(layout)
	}
	var alarms []string
	for _, a := range inc.Alarms {
		alarms = append(alarms, a.Name+" ("+a.Status+")")
	}
	node := dash(inc.NodeName)
	if inc.NodeID != "" {
		node += " (" + inc.NodeID + ")"
	}
	if err := kv([][2]string{
		{"Incident", strconv.FormatUint(inc.ID, 10)}, {"State", inc.State}, {"Kind", inc.Kind}, {"Summary", inc.Summary},
		{"Node", node}, {"VM", dash(inc.VMID)},
		{"First evidence", inc.FirstEvidence.Format(layout)}, {"Detected", inc.DetectedAt.Format(layout)},
		{"Time to detect", duration(inc.TimeToDetect)},
		{"Resolved", resolved}, {"Time to recover", ttr}, {"Resolution", dash(inc.Resolution)},
		{"Alarms", dash(strings.Join(alarms, ", "))},
	}); err != nil {
		return err
	}
	if len(inc.VMs) > 0 {
		fmt.Fprintln(stdout)
		rows := [][]string{}
		for _, v := range inc.VMs {
			after, outcome := "-", "not yet"
			if !v.RecoveredAt.IsZero() {
				after, outcome = since(v.RecoveredAt, inc.FirstEvidence), v.Outcome
			}
			rows = append(rows, []string{v.Name, strconv.FormatBool(v.HA), outcome, short(v.RecoveredOn), after})
		}
		if err := table([]string{"VM", "HA", "RECOVERED", "ON", "AFTER"}, rows); err != nil {
			return err
		}
	}
	fmt.Fprintln(stdout)
	rows := [][]string{}
	for _, e := range inc.Timeline {
		ev := "-"
		if e.EventSeq != 0 {
			ev = strconv.FormatUint(e.EventSeq, 10)
		}
		rows = append(rows, []string{since(e.Time, inc.FirstEvidence), e.Kind, ev, dash(e.Actor), e.Message})
	}
	if err := table([]string{"AT", "KIND", "EVENT", "BY", "MESSAGE"}, rows); err != nil {
		return err
	}
	if inc.Dropped > 0 {
		fmt.Fprintf(stdout, "(%d more entries not kept: see chime event list)\n", inc.Dropped)
	}
	return nil
}
