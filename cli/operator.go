package cli

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"

	"github.com/urfave/cli/v2"
)

func operatorCommand() *cli.Command {
	return &cli.Command{
		Name:  "operator",
		Usage: "cluster operations: Raft peers, gossip members, snapshots",
		Subcommands: []*cli.Command{
			haCommand(),
			gossipCommand(),
			{
				Name: "raft", Usage: "inspect and change the Raft configuration",
				Subcommands: []*cli.Command{
					{
						Name: "list-peers", Usage: "list the Raft servers", Flags: append(clientFlags(), outputFlag()),
						Action: func(c *cli.Context) error {
							o, err := output(c)
							if err != nil {
								return err
							}
							peers, err := newClient(c).Peers(c.Context)
							if err != nil {
								return err
							}
							if o == "json" {
								return printJSON(peers)
							}
							rows := [][]string{}
							for _, p := range peers {
								role := "follower"
								if p.Leader {
									role = "leader"
								}
								rows = append(rows, []string{p.ID, p.Address, role, fmt.Sprint(p.Voter)})
							}
							return table([]string{"ID", "ADDRESS", "STATE", "VOTER"}, rows)
						},
					},
					{
						Name: "remove-peer", Usage: "remove a (dead) server from the Raft configuration", ArgsUsage: "ID", Flags: clientFlags(),
						Action: func(c *cli.Context) error {
							id, err := oneArg(c, "server ID")
							if err != nil {
								return err
							}
							if err := newClient(c).RemovePeer(c.Context, id); err != nil {
								return err
							}
							fmt.Fprintf(stdout, "peer %s removed\n", id)
							return nil
						},
					},
				},
			},
			{
				Name: "members", Usage: "list gossip members (servers and agents)", Flags: append(clientFlags(), outputFlag()),
				Action: func(c *cli.Context) error {
					o, err := output(c)
					if err != nil {
						return err
					}
					ms, err := newClient(c).Members(c.Context)
					if err != nil {
						return err
					}
					if o == "json" {
						return printJSON(ms)
					}
					rows := [][]string{}
					for _, m := range ms {
						rows = append(rows, []string{m.Name, m.Addr, m.State, dash(m.Meta["role"])})
					}
					return table([]string{"NAME", "ADDRESS", "STATE", "ROLE"}, rows)
				},
			},
			{
				Name: "snapshot", Usage: "save or restore the replicated state",
				Subcommands: []*cli.Command{
					{
						Name: "save", Usage: "write a snapshot of the state to FILE", ArgsUsage: "FILE", Flags: clientFlags(),
						Action: func(c *cli.Context) error {
							path, err := oneArg(c, "FILE")
							if err != nil {
								return err
							}
							var buf bytes.Buffer
							if err := newClient(c).SnapshotSave(c.Context, &buf); err != nil {
								return err
							}
							tmp := path + ".tmp"
							if err := os.WriteFile(tmp, buf.Bytes(), 0o600); err != nil {
								return fmt.Errorf("write %s: %w", path, err)
							}
							if err := os.Rename(tmp, path); err != nil {
								return err
							}
							abs, _ := filepath.Abs(path)
							fmt.Fprintf(stdout, "snapshot saved to %s (%d bytes)\n", abs, buf.Len())
							return nil
						},
					},
					{
						Name: "restore", Usage: "replace the cluster's state with a snapshot FILE", ArgsUsage: "FILE", Flags: clientFlags(),
						Action: func(c *cli.Context) error {
							path, err := oneArg(c, "FILE")
							if err != nil {
								return err
							}
							data, err := os.ReadFile(path)
							if err != nil {
								return fmt.Errorf("read %s: %w", path, err)
							}
							if err := newClient(c).SnapshotRestore(c.Context, data); err != nil {
								return err
							}
							fmt.Fprintf(stdout, "snapshot %s restored (%d bytes)\n", path, len(data))
							return nil
						},
					},
				},
			},
		},
	}
}
