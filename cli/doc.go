// Package cli is chime's command-line interface: the urfave/cli/v2 command
// tree (server, agent, vm, node, operator, alarm, event), one file per
// command group, with table and JSON output.
package cli
