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
