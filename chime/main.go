// Command chime is the one binary of chime: server, agent and admin CLI.
package main

import (
	"os"

	"github.com/chime-ha/chime/cli"
)

func main() { os.Exit(cli.Main()) }
