package cli

import (
	"strconv"

	"github.com/urfave/cli/v2"
)

func taskCommand() *cli.Command {
	return &cli.Command{
		Name:  "task",
		Usage: "replicated operations (migrate, evacuate, drain, rebuild) and their steps",
		Subcommands: []*cli.Command{
			{
				Name: "list", Usage: "list tasks, newest first", Flags: append(clientFlags(), outputFlag()),
				Action: func(c *cli.Context) error {
					o, err := output(c)
					if err != nil {
						return err
					}
					ts, err := newClient(c).Tasks(c.Context)
					if err != nil {
						return err
					}
					if o == "json" {
						return printJSON(ts)
					}
					rows := [][]string{}
					for _, t := range ts {
						done := 0
						for _, st := range t.Steps {
							if st.State == "succeeded" {
								done++
							}
						}
						rows = append(rows, []string{short(t.ID), t.Kind, t.State, short(t.NodeID), short(t.VMID),
							strconv.Itoa(done) + "/" + strconv.Itoa(len(t.Steps)), ago(t.Created), dash(t.Error)})
					}
					return table([]string{"ID", "KIND", "STATE", "NODE", "VM", "STEPS", "CREATED", "ERROR"}, rows)
				},
			},
			{
				Name: "show", Usage: "show one task and its steps", ArgsUsage: "ID", Flags: append(clientFlags(), outputFlag()),
				Action: func(c *cli.Context) error {
					if _, err := output(c); err != nil {
						return err
					}
					id, err := oneArg(c, "task ID")
					if err != nil {
						return err
					}
					t, err := newClient(c).GetTask(c.Context, id)
					if err != nil {
						return err
					}
					return showTask(c, t)
				},
			},
		},
	}
}
