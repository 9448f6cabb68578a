package cli

import (
	"fmt"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/chime-ha/chime/chime/api"
)

func eventCommand() *cli.Command {
	return &cli.Command{
		Name:  "event",
		Usage: "the cluster's event log",
		Subcommands: []*cli.Command{{
			Name: "stream", Usage: "print events as they happen (Ctrl-C to stop)",
			Flags: append(clientFlags(), outputFlag(),
				&cli.Uint64Flag{Name: "after", Usage: "start after this sequence number (default: the last 20 events)"},
				&cli.BoolFlag{Name: "no-follow", Usage: "print what is there and exit"}),
			Action: func(c *cli.Context) error {
				o, err := output(c)
				if err != nil {
					return err
				}
				cl := newClient(c)
				after := c.Uint64("after")
				if !c.IsSet("after") {
					_, last, err := cl.Events(c.Context, 0, api.QueryOptions{})
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
					ev, last, err := cl.Events(c.Context, after, q)
					if c.Context.Err() != nil {
						return nil
					}
					if err != nil {
						return err
					}
					for _, e := range ev {
						if o == "json" {
							if err := printJSON(e); err != nil {
								return err
							}
						} else {
							fmt.Fprintf(stdout, "%s  %-6d %-20s %s\n", e.Time.Local().Format("2006-01-02 15:04:05"), e.Seq, e.Kind, e.Message)
						}
						after = e.Seq
					}
					if !follow && len(ev) == 0 {
						return nil
					}
					_ = last
				}
			},
		}},
	}
}
