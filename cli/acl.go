package cli

import (
	"errors"
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/chime/structs"
)

// aclCommand is `chime acl`: bootstrap ACLs and manage tokens
// (docs/security.md).
func aclCommand() *cli.Command {
	return &cli.Command{
		Name:  "acl",
		Usage: "ACL tokens: bootstrap, create, list, delete",
		Subcommands: []*cli.Command{
			{
				Name:  "bootstrap",
				Usage: "create the cluster's first management token (once per cluster)",
				Flags: append(clientFlags(), outputFlag()),
				Action: func(c *cli.Context) error {
					o, err := output(c)
					if err != nil {
						return err
					}
					t, err := newClient(c).ACLBootstrap(c.Context)
					if errors.Is(err, structs.ErrConflict) {
						return fmt.Errorf("acl bootstrap refused: %w", err)
					}
					if err != nil {
						return err
					}
					return printToken(o, t)
				},
			},
			{
				Name:  "token",
				Usage: "create, list and delete ACL tokens (needs a management token)",
				Subcommands: []*cli.Command{
					{
						Name:  "create",
						Usage: "create a token; its secret is shown once",
						Flags: append(clientFlags(), outputFlag(),
							&cli.StringFlag{Name: "role", Required: true, Usage: "read, operator, management or agent-join"},
							&cli.StringFlag{Name: "description", Usage: "what the token is for"}),
						Action: func(c *cli.Context) error {
							o, err := output(c)
							if err != nil {
								return err
							}
							req := api.CreateTokenRequest{Role: c.String("role"), Description: c.String("description")}
							if err := structs.ValidateRole("--role", req.Role); err != nil {
								return err
							}
							t, err := newClient(c).CreateToken(c.Context, req)
							if err != nil {
								return err
							}
							return printToken(o, t)
						},
					},
					{
						Name:  "list",
						Usage: "list tokens (accessor ids and roles; never secrets)",
						Flags: append(clientFlags(), outputFlag()),
						Action: func(c *cli.Context) error {
							o, err := output(c)
							if err != nil {
								return err
							}
							toks, err := newClient(c).ListTokens(c.Context)
							if err != nil {
								return err
							}
							if o == "json" {
								return printJSON(toks)
							}
							rows := [][]string{}
							for _, t := range toks {
								rows = append(rows, []string{t.AccessorID, t.Role, dash(t.Description), ago(t.CreateTime)})
							}
							return table([]string{"ACCESSOR", "ROLE", "DESCRIPTION", "CREATED"}, rows)
						},
					},
					{
						Name:      "delete",
						Usage:     "delete a token by accessor id (or a unique prefix)",
						ArgsUsage: "ACCESSOR",
						Flags:     clientFlags(),
						Action: func(c *cli.Context) error {
							id, err := oneArg(c, "accessor id")
							if err != nil {
								return err
							}
							if err := newClient(c).DeleteToken(c.Context, id); err != nil {
								return err
							}
							fmt.Fprintf(stdout, "token %s deleted\n", id)
							return nil
						},
					},
				},
			},
		},
	}
}

func printToken(o string, t *api.TokenSecret) error {
	if o == "json" {
		return printJSON(t)
	}
	return kv([][2]string{{"AccessorID", t.AccessorID}, {"SecretID", t.SecretID}, {"Role", t.Role}, {"Description", dash(t.Description)}})
}
