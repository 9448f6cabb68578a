package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/hashicorp/go-hclog"
	"github.com/urfave/cli/v2"

	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/chime/structs"
)

// App builds the chime command tree.
func App() *cli.App {
	return &cli.App{
		Name:    "chime",
		Usage:   "keep virtual machines highly available on a fleet of KVM hypervisors",
		Version: structs.Version,
		Description: `chime runs as three servers (a Raft group holding the desired state), an agent on
every hypervisor (reconciling libvirt/qemu towards that state), and this CLI for admins.

Start a one-server test cluster with 'chime server --dev', then try 'chime vm create web --vcpus 1 --memory 256'.`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "log-level", Value: "info", Usage: "trace, debug, info, warn or error", EnvVars: []string{"CHIME_LOG_LEVEL"}},
			&cli.BoolFlag{Name: "log-json", Usage: "log as JSON lines", EnvVars: []string{"CHIME_LOG_JSON"}},
		},
		Commands: []*cli.Command{
			serverCommand(),
			agentCommand(),
			vmCommand(),
			nodeCommand(),
			operatorCommand(),
			taskCommand(),
			alarmCommand(),
			incidentCommand(),
			eventCommand(),
			tlsCommand(),
			aclCommand(),
			completionCommand(),
		},
		EnableBashCompletion: true,
		ExitErrHandler:       func(*cli.Context, error) {},
	}
}

// Main runs the CLI with os.Args and returns the process exit code.
func Main() int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	app := App()
	args := os.Args
	if len(args) < 2 || args[len(args)-1] != completionFlag {
		args = interspersed(app, args) // completion needs its flag last
	}
	err := app.RunContext(ctx, args)
	if err == nil {
		return 0
	}
	fmt.Fprintln(os.Stderr, "Error:", oneLine(err))
	var ec cli.ExitCoder
	if errors.As(err, &ec) && ec.ExitCode() != 0 {
		return ec.ExitCode()
	}
	return 1
}

func oneLine(err error) string {
	return strings.Join(strings.Fields(err.Error()), " ")
}

// newLogger builds the component logger from the global flags.
func newLogger(c *cli.Context, name string) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{
		Name:       name,
		Level:      hclog.LevelFromString(c.String("log-level")),
		JSONFormat: c.Bool("log-json"),
		Output:     os.Stderr,
	})
}

// Flags shared by admin commands.
func clientFlags() []cli.Flag {
	return append([]cli.Flag{
		&cli.StringFlag{Name: "address", Value: "http://127.0.0.1:4650", Usage: "API address of any server (https with the --tls-* files)", EnvVars: []string{"CHIME_ADDR"}},
		&cli.StringFlag{Name: "token", Usage: "ACL token (secret id) sent with every request", EnvVars: []string{"CHIME_TOKEN"}},
	}, tlsFlags()...)
}

func outputFlag() cli.Flag {
	return &cli.StringFlag{Name: "output", Aliases: []string{"o"}, Value: "table", Usage: "table or json"}
}

func newClient(c *cli.Context) *api.Client {
	cl := api.NewClient(c.String("address"))
	cl.Token = c.String("token")
	clientTLS(c, cl)
	return cl
}

// output checks -o before any request is made.
func output(c *cli.Context) (string, error) {
	o := c.String("output")
	if o != "table" && o != "json" {
		return "", fmt.Errorf("-o/--output: %q must be table or json", o)
	}
	return o, nil
}

// oneArg returns the single positional argument or a usage error.
func oneArg(c *cli.Context, what string) (string, error) {
	if c.NArg() != 1 {
		return "", fmt.Errorf("expected exactly one %s argument, got %d (see '%s --help')", what, c.NArg(), c.Command.HelpName)
	}
	return c.Args().First(), nil
}

var stdout io.Writer = os.Stdout
