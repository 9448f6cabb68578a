package cli

import (
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strings"

	"github.com/urfave/cli/v2"
)

// configFlag is --config FILE of `chime server` and `chime agent`.
func configFlag() cli.Flag {
	return &cli.StringFlag{Name: "config", Usage: "JSON file whose keys are this command's flag names (command-line flags win)",
		EnvVars: []string{"CHIME_CONFIG"}}
}

// applyConfigFile reads --config and sets every flag it names that was not
// given on the command line or in the environment. Keys are flag names
// without dashes ("alarm-webhook"); values are strings, numbers, booleans,
// or lists for repeatable flags. An unknown key or a bad value is an error
// naming the key, and nothing runs.
func applyConfigFile(c *cli.Context) error {
	path := c.String("config")
	if path == "" {
		return nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("--config: %w", err)
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		return fmt.Errorf("--config %s: not a JSON object: %w", path, err)
	}
	known := map[string]cli.Flag{}
	for _, f := range c.Command.Flags {
		for _, n := range f.Names() {
			known[n] = f
		}
	}
	keys := make([]string, 0, len(raw))
	for k := range raw {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		f, ok := known[k]
		if !ok || k == "config" {
			return fmt.Errorf("--config %s: unknown key %q (keys are the flag names of 'chime %s')", path, k, c.Command.Name)
		}
		if c.IsSet(k) {
			continue // the command line or the environment wins
		}
		values, err := configValues(raw[k])
		if err != nil {
			return fmt.Errorf("--config %s: key %q: %w", path, k, err)
		}
		_, isSlice := f.(*cli.StringSliceFlag)
		if len(values) > 1 && !isSlice {
			return fmt.Errorf("--config %s: key %q takes one value, got a list", path, k)
		}
		for _, v := range values {
			if err := c.Set(k, v); err != nil {
				return fmt.Errorf("--config %s: key %q: %w", path, k, err)
			}
		}
	}
	return nil
}

// configValues turns a JSON value into flag strings.
func configValues(raw json.RawMessage) ([]string, error) {
	var list []json.RawMessage
	if err := json.Unmarshal(raw, &list); err == nil {
		var out []string
		for _, item := range list {
			v, err := configScalar(item)
			if err != nil {
				return nil, err
			}
			out = append(out, v)
		}
		return out, nil
	}
	v, err := configScalar(raw)
	if err != nil {
		return nil, err
	}
	return []string{v}, nil
}

func configScalar(raw json.RawMessage) (string, error) {
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		return s, nil
	}
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return "", err
	}
	switch x := v.(type) {
	case float64, bool:
		return strings.TrimSpace(fmt.Sprint(x)), nil
	}
	return "", fmt.Errorf("must be a string, number, boolean or a list of them")
}
