package cli

import (
	"fmt"

	"github.com/urfave/cli/v2"
)

// completionFlag is urfave/cli's hidden flag: a command line that ends in
// it prints the words that may come next instead of running.
const completionFlag = "--generate-bash-completion"

// bashCompletion asks chime itself for the next words (the command line
// typed so far, then completionFlag), so it always matches the binary.
const bashCompletion = `# chime completion for bash: source <(chime completion bash)
_chime_complete() {
  local cur="${COMP_WORDS[COMP_CWORD]}" opts
  local -a words=("${COMP_WORDS[@]:0:COMP_CWORD}")
  if [[ "$cur" == -* ]]; then
    opts=$("${words[@]}" "$cur" ` + completionFlag + ` 2>/dev/null)
  else
    opts=$("${words[@]}" ` + completionFlag + ` 2>/dev/null)
  fi
  COMPREPLY=($(compgen -W "${opts}" -- "${cur}"))
}
complete -o default -F _chime_complete chime
`

const zshCompletion = `#compdef chime
# chime completion for zsh: source <(chime completion zsh), or save it as _chime in a directory of $fpath
_chime() {
  local -a opts
  local cur=${words[-1]}
  if [[ "$cur" == -* ]]; then
    opts=("${(@f)$(${words[@]:0:#words[@]-1} ${cur} ` + completionFlag + ` 2>/dev/null)}")
  else
    opts=("${(@f)$(${words[@]:0:#words[@]-1} ` + completionFlag + ` 2>/dev/null)}")
  fi
  opts=("${(@)opts//:/\\:}")
  if [[ -n "${opts[1]}" ]]; then
    _describe 'values' opts
  else
    _files
  fi
}
if [[ "$funcstack[1]" == "_chime" ]]; then
  _chime "$@"
else
  compdef _chime chime
fi
`

func completionCommand() *cli.Command {
	return &cli.Command{
		Name:      "completion",
		Usage:     "print a shell completion script: source <(chime completion bash)",
		ArgsUsage: "bash|zsh",
		// Complete the shell names themselves.
		BashComplete: func(*cli.Context) { fmt.Fprintln(stdout, "bash\nzsh") },
		Action: func(c *cli.Context) error {
			shell, err := oneArg(c, "shell (bash or zsh)")
			if err != nil {
				return err
			}
			switch shell {
			case "bash":
				_, err = fmt.Fprint(stdout, bashCompletion)
			case "zsh":
				_, err = fmt.Fprint(stdout, zshCompletion)
			default:
				return fmt.Errorf("shell: %q is not bash or zsh", shell)
			}
			return err
		},
	}
}
