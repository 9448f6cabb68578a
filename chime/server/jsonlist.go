package server

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
)

// indentedWriter is an answer that writes its own indented JSON (the
// bytes json.Encoder with SetIndent("", "  ") would write), so that a
// large list is written element by element rather than marshalled whole.
type indentedWriter interface {
	writeIndented(w io.Writer) error
}

// jsonList is a list answer (GET /v1/vms, /v1/nodes) written one element
// at a time. Encoding a list of 100,000 VMs whole held the marshalled
// list (53 MiB), its indented copy and their growth garbage at once: the
// server's peak memory in issue 14's scale benchmark (docs/benchmarks.md).
// Written this way, an answer holds one element's encoding at a time.
type jsonList[T any] []T

// writeIndented writes the list as json.Encoder with SetIndent("", "  ")
// would: "null" for a nil list, "[]" for an empty one, otherwise each
// element on its own lines indented by two spaces, then a newline.
func (l jsonList[T]) writeIndented(w io.Writer) error {
	bw := bufio.NewWriterSize(w, 64<<10)
	switch {
	case l == nil:
		_, _ = bw.WriteString("null\n")
	case len(l) == 0:
		_, _ = bw.WriteString("[]\n")
	default:
		_, _ = bw.WriteString("[\n")
		for i := range l {
			// &l[i]: an element of a slice is addressable, so its
			// pointer-receiver MarshalJSON applies, as in a whole encode.
			b, err := json.MarshalIndent(&l[i], "  ", "  ")
			if err != nil {
				return fmt.Errorf("encode list element %d: %w", i, err)
			}
			if i > 0 {
				_, _ = bw.WriteString(",\n")
			}
			_, _ = bw.WriteString("  ")
			_, _ = bw.Write(b)
		}
		_, _ = bw.WriteString("\n]\n")
	}
	return bw.Flush()
}
