package cli

import (
	"github.com/urfave/cli/v2"
)

func alarmCommand() *cli.Command {
	return &cli.Command{
		Name:  "alarm",
		Usage: "alarms (node unreachable, node error, task failed)",
		Subcommands: []*cli.Command{{
			Name: "list", Usage: "list firing alarms", Flags: append(clientFlags(), outputFlag()),
			Action: func(c *cli.Context) error {
				o, err := output(c)
				if err != nil {
					return err
				}
				al, err := newClient(c).Alarms(c.Context)
				if err != nil {
					return err
				}
				if o == "json" {
					return printJSON(al)
				}
				rows := [][]string{}
				for _, a := range al {
					rows = append(rows, []string{a.Name, a.Severity, a.Summary, ago(a.StartsAt), a.Fingerprint})
				}
				return table([]string{"ALARM", "SEVERITY", "SUMMARY", "SINCE", "FINGERPRINT"}, rows)
			},
		}},
	}
}
