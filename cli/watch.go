package cli

import (
	"errors"
	"fmt"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/chime-ha/chime/chime/api"
)

// watchFlag is --watch of the list commands.
func watchFlag() cli.Flag {
	return &cli.BoolFlag{Name: "watch", Aliases: []string{"w"}, Usage: "print the list again each time the cluster's state changes (blocking queries), until interrupted"}
}

// watchWait is how long one blocking query of --watch waits for a change.
const watchWait = 5 * time.Minute

// listOrWatch runs list once (index 0: answer at once) and prints what it
// answered; with --watch, it then asks again with a blocking query on
// the index the last answer carried, and prints again, with a time
// stamp line, each time the index moved, until the command's context ends
// (Ctrl-C: a clean exit). list returns the answer's index and a function
// that prints it; it must not print by itself.
func listOrWatch(c *cli.Context, list func(api.QueryOptions) (uint64, func() error, error)) error {
	idx, print, err := list(api.QueryOptions{})
	if err != nil {
		return err
	}
	if err := print(); err != nil {
		return err
	}
	if !c.Bool("watch") {
		return nil
	}
	for {
		next, print, err := list(api.QueryOptions{Index: idx, Wait: watchWait})
		if c.Context.Err() != nil {
			return nil // interrupted
		}
		if err != nil {
			var ae *api.Error
			if errors.As(err, &ae) && ae.Status >= 400 && ae.Status < 500 {
				return err // the question is wrong: asking again will not help
			}
			fmt.Fprintf(stdout, "\n# %s: %v (retrying)\n", time.Now().Format(time.TimeOnly), err)
			select {
			case <-c.Context.Done():
				return nil
			case <-time.After(2 * time.Second):
			}
			continue
		}
		if next == idx {
			continue // the wait ended without a change
		}
		idx = next
		fmt.Fprintf(stdout, "\n# %s, index %d\n", time.Now().Format(time.TimeOnly), idx)
		if err := print(); err != nil {
			return err
		}
	}
}
