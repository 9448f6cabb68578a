package cli

import (
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/chime-ha/chime/gossip"
)

// gossipCommand is `chime operator gossip`: the gossip encryption key.
func gossipCommand() *cli.Command {
	return &cli.Command{
		Name: "gossip", Usage: "the gossip encryption key",
		Subcommands: []*cli.Command{
			keyringCommand(),
			{
				Name: "keygen", Usage: "print a new random gossip key (base64 of 32 bytes) for --gossip-key",
				Action: func(c *cli.Context) error {
					if c.NArg() > 0 {
						return fmt.Errorf("keygen takes no arguments, got %q", c.Args().First())
					}
					k, err := gossip.NewKey()
					if err != nil {
						return err
					}
					fmt.Fprintln(stdout, k)
					return nil
				},
			},
		},
	}
}

// keyringCommand is `chime operator gossip keyring`: rotate the gossip key on
// every member (servers and agents) of a running cluster.
func keyringCommand() *cli.Command {
	change := func(op, usage string) *cli.Command {
		return &cli.Command{
			Name: op, Usage: usage, ArgsUsage: "KEY", Flags: append(clientFlags(), outputFlag()),
			Action: func(c *cli.Context) error {
				o, err := output(c)
				if err != nil {
					return err
				}
				key, err := oneArg(c, "KEY (base64)")
				if err != nil {
					return err
				}
				if k, err := gossip.ParseKey(key); err != nil || k == nil {
					return fmt.Errorf("KEY must be standard base64 of 16, 24 or 32 bytes ('chime operator gossip keygen')")
				}
				res, err := newClient(c).GossipKeyringChange(c.Context, op, key)
				if err != nil {
					return err
				}
				if o == "json" {
					return printJSON(res)
				}
				fmt.Fprintf(stdout, "%s %s: %d members asked, %d not reached\n", op, gossip.FingerprintOf(key), res.Members, len(res.Errors))
				for m, e := range res.Errors {
					fmt.Fprintf(stdout, "  %s: %s\n", m, e)
				}
				if len(res.Errors) > 0 {
					return fmt.Errorf("%d members not reached: run the command again once they are back", len(res.Errors))
				}
				return nil
			},
		}
	}
	return &cli.Command{
		Name: "keyring", Usage: "rotate the gossip key on every member: install NEW, use NEW, remove OLD",
		Subcommands: []*cli.Command{
			change(gossip.KeyInstall, "add a key every member accepts"),
			change(gossip.KeyUse, "make an installed key the one every member sends with"),
			change(gossip.KeyRemove, "drop a key from every member (never the primary)"),
			{
				Name: "list", Usage: "the answering server's keys (fingerprints; the primary marked)", Flags: append(clientFlags(), outputFlag()),
				Action: func(c *cli.Context) error {
					o, err := output(c)
					if err != nil {
						return err
					}
					kr, err := newClient(c).GossipKeyring(c.Context)
					if err != nil {
						return err
					}
					if o == "json" {
						return printJSON(kr)
					}
					rows := [][]string{}
					for _, k := range kr.Keys {
						rows = append(rows, []string{k.Fingerprint, fmt.Sprint(k.Primary)})
					}
					fmt.Fprintf(stdout, "server %s, %d gossip members\n", kr.Server, kr.Members)
					return table([]string{"FINGERPRINT", "PRIMARY"}, rows)
				},
			},
		},
	}
}
