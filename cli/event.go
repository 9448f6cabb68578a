package cli

import (
	"fmt"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/chime/structs"
)

func eventCommand() *cli.Command {
	return &cli.Command{
		Name:  "event",
		Usage: "the cluster's event log",
		Subcommands: []*cli.Command{{
			Name: "stream", Usage: "print events as they happen (Ctrl-C to stop)",
			Flags: append(clientFlags(), outputFlag(),
				&cli.Uint64Flag{Name: "after", Usage: "start after this sequence number (default: the last 20 events)"},
				&cli.BoolFlag{Name: "no-follow", Usage: "print what is there and exit"},
				&cli.BoolFlag{Name: "audit", Usage: "the audit log (writes through the API) instead of the other events"}),
			Action: func(c *cli.Context) error {
				o, err := output(c)
				if err != nil {
					return err
				}
				cl := newClient(c)
				after := c.Uint64("after")
				if !c.IsSet("after") {
					last := lastEventSeq(c, cl)
					if err != nil {
						return err
					}
					if last > 20 {
						after = last - 20
					}
				}
				// Following blocks until an event newer than the last one
				// printed exists; --no-follow must not wait for one.
				follow := !c.Bool("no-follow")
				for {
					q := api.QueryOptions{}
					if follow {
						q = api.QueryOptions{Index: after, Wait: 30 * time.Second}
					}
					ev, last, err := listEvents(c, cl, after, 0, q)
					if c.Context.Err() != nil {
						return nil
					}
					if err != nil {
						return err
					}
					for _, e := range ev {
						if err := printEvent(o, e); err != nil {
							return err
						}
						after = e.Seq
					}
					if !follow && len(ev) == 0 {
						return nil
					}
					// The server's scan went to last: events of the other
					// kind (audit or not) up to it were skipped.
					after = max(after, last)
				}
			},
		}, {
			Name: "list", Usage: "print the event log (or, with --audit, the audit log) and exit",
			Flags: append(clientFlags(), outputFlag(),
				&cli.Uint64Flag{Name: "after", Usage: "events after this sequence number"},
				&cli.IntFlag{Name: "limit", Value: 100, Usage: "at most this many (1-10000)"},
				&cli.BoolFlag{Name: "audit", Usage: "the audit log: writes through the API, who made them and their outcome"}),
			Action: func(c *cli.Context) error {
				o, err := output(c)
				if err != nil {
					return err
				}
				ev, _, err := listEvents(c, newClient(c), c.Uint64("after"), c.Int("limit"), api.QueryOptions{})
				if err != nil {
					return err
				}
				for _, e := range ev {
					if err := printEvent(o, e); err != nil {
						return err
					}
				}
				return nil
			},
		}},
	}
}

// listEvents lists the event log, or with --audit the audit log.
func listEvents(c *cli.Context, cl *api.Client, after uint64, limit int, q api.QueryOptions) ([]structs.Event, uint64, error) {
	if c.Bool("audit") {
		return cl.AuditEvents(c.Context, after, limit, q)
	}
	if limit > 0 {
		return cl.EventsLimit(c.Context, after, limit, q)
	}
	return cl.Events(c.Context, after, q)
}

// lastEventSeq is the newest sequence number of the event log.
func lastEventSeq(c *cli.Context, cl *api.Client) uint64 {
	_, last, err := cl.Events(c.Context, ^uint64(0)-1, api.QueryOptions{})
	if err != nil {
		return 0
	}
	return last
}

func printEvent(o string, e structs.Event) error {
	if o == "json" {
		return printJSON(e)
	}
	if a := e.Audit; a != nil {
		line := fmt.Sprintf("%s  %-6d %-44s %-7s %-32s %d", e.Time.Local().Format("2006-01-02 15:04:05"), e.Seq, a.Actor, a.Method, a.Path, a.Status)
		if a.Error != "" {
			line += "  " + a.Error
		}
		if a.Suppressed > 0 {
			line += fmt.Sprintf("  (+%d refusals from %s not recorded)", a.Suppressed, a.Source)
		}
		fmt.Fprintln(stdout, line)
		return nil
	}
	fmt.Fprintf(stdout, "%s  %-6d %-20s %s\n", e.Time.Local().Format("2006-01-02 15:04:05"), e.Seq, e.Kind, e.Message)
	return nil
}
