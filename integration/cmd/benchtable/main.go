// Command benchtable turns the summary lines of issue 14's benchmarks
// (`just bench`) into the markdown tables of docs/benchmarks.md.
//
// It reads the benchmarks' output (files named on the command line, or
// standard input) and keeps two kinds of lines:
//
//   - "BENCH14 KIND SUBJECT… key=value…": one table per KIND, one row per
//     line, a column per key (in the order first seen), the words before
//     the first key=value as the row's subject; a word after a key=value
//     names the next one ("… chime p50=426ms virsh_start p50=263ms" has
//     the columns chime_p50 and virsh_start_p50);
//   - BenchmarkCreates' "creates: vms=N clients=N X creates/s p50 X ms
//     p99 X ms ok N failed N", as KIND "creates".
//
// The tables come in the order of the six benchmarks (restart,
// migrate, failover, creates and creates-etcd, detect and falsepos, scale; other kinds
// after them), under a header naming the machine, the date and the commit:
//
//	go test … | tee bench.out; go run ./integration/cmd/benchtable bench.out
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"time"
)

// table is one KIND's rows.
type table struct {
	kind string
	keys []string
	rows []row
}

type row struct {
	subject string
	vals    map[string]string
}

var kindRE = regexp.MustCompile(`^[a-z][a-z0-9_-]*$`)

// order and titles of the benchmarks.
var titles = []struct{ kind, title string }{
	{"restart", "1. Crashed qemu → running again, vs `virsh start`"},
	{"migrate", "2. Live migration through chime, vs `virsh migrate --live --p2p`"},
	{"failover", "3. Leader `kill -9` → first write accepted, vs etcd"},
	{"creates", "4. Write throughput: VM creates through the API"},
	{"creates-etcd", "4. Write throughput: VM creates (3 `chime server` processes) vs etcd puts, same run, alternating"},
	{"detect", "5. Node death → unreachable, vs memberlist alone"},
	{"falsepos", "5. False positives: healthy agents under full CPU load"},
	{"scale", "6. Scale on one leader"},
}

// parse collects the tables from r into ts (by kind).
func parse(r io.Reader, ts map[string]*table) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		kind, fields, ok := parseLine(sc.Text())
		if !ok {
			continue
		}
		t := ts[kind]
		if t == nil {
			t = &table{kind: kind}
			ts[kind] = t
		}
		rw := row{vals: map[string]string{}}
		var subj []string
		prefix, seenKV := "", false
		for _, f := range fields {
			k, v, isKV := strings.Cut(f, "=")
			if !isKV {
				if seenKV {
					prefix = f + "_"
				} else {
					subj = append(subj, f)
				}
				continue
			}
			seenKV = true
			k, prefix = prefix+k, ""
			if !slices.Contains(t.keys, k) {
				t.keys = append(t.keys, k)
			}
			rw.vals[k] = v
		}
		rw.subject = strings.Join(subj, " ")
		t.rows = append(t.rows, rw)
	}
	return sc.Err()
}

// parseLine returns a summary line's kind and its fields after the kind.
func parseLine(l string) (string, []string, bool) {
	if i := strings.Index(l, "BENCH14 "); i >= 0 {
		f := strings.Fields(l[i+len("BENCH14 "):])
		// A kind is a word of lower-case letters, and a summary has a
		// key=value field: not a sentence that names BENCH14.
		if len(f) < 2 || !kindRE.MatchString(f[0]) || !slices.ContainsFunc(f[1:], func(s string) bool { return strings.Contains(s, "=") }) {
			return "", nil, false
		}
		return f[0], f[1:], true
	}
	if i := strings.Index(l, "creates: vms="); i >= 0 {
		// creates: vms=0      clients=1    114.0 creates/s  p50    2.6 ms  p99   13.0 ms  ok 912  failed 0
		f := strings.Fields(l[i+len("creates: "):])
		var out []string
		for j := 0; j < len(f); j++ {
			switch {
			case strings.Contains(f[j], "="):
				out = append(out, f[j])
			case j+1 < len(f) && f[j+1] == "creates/s":
				out = append(out, "creates_per_s="+f[j])
				j++
			case (f[j] == "p50" || f[j] == "p99") && j+2 < len(f):
				out = append(out, f[j]+"_"+f[j+2]+"="+f[j+1])
				j += 2
			case (f[j] == "ok" || f[j] == "failed") && j+1 < len(f):
				out = append(out, f[j]+"="+f[j+1])
				j++
			}
		}
		return "creates", out, true
	}
	return "", nil, false
}

// render writes the header and the tables as markdown.
func render(w io.Writer, ts map[string]*table, machine, date, commit string) {
	fmt.Fprintf(w, "Machine: %s. Date: %s. Commit: `%s`.\n", machine, date, commit)
	var kinds []string
	for _, t := range titles {
		if ts[t.kind] != nil {
			kinds = append(kinds, t.kind)
		}
	}
	var others []string
	for k := range ts {
		if !slices.Contains(kinds, k) {
			others = append(others, k)
		}
	}
	slices.Sort(others)
	for _, k := range append(kinds, others...) {
		t := ts[k]
		title := k
		for _, tt := range titles {
			if tt.kind == k {
				title = tt.title
			}
		}
		fmt.Fprintf(w, "\n### %s\n\n", title)
		hasSubj := slices.ContainsFunc(t.rows, func(r row) bool { return r.subject != "" })
		var head, sep []string
		if hasSubj {
			head, sep = append(head, "what"), append(sep, "---")
		}
		for _, key := range t.keys {
			head, sep = append(head, key), append(sep, "---:")
		}
		fmt.Fprintf(w, "| %s |\n|%s|\n", strings.Join(head, " | "), strings.Join(sep, "|"))
		for _, r := range t.rows {
			var cells []string
			if hasSubj {
				cells = append(cells, r.subject)
			}
			for _, key := range t.keys {
				v := r.vals[key]
				if v == "" {
					v = "–"
				}
				cells = append(cells, v)
			}
			fmt.Fprintf(w, "| %s |\n", strings.Join(cells, " | "))
		}
	}
}

// machine describes this machine: CPUs and the CPU model.
func machine() string {
	model := ""
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(data), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	s := fmt.Sprintf("%d cores", runtime.NumCPU())
	if model != "" {
		s += " (" + model + ")"
	}
	return s
}

func main() {
	commit := flag.String("commit", "", "commit named in the header (default: git describe of the working tree)")
	flag.Parse()
	if *commit == "" {
		out, err := exec.Command("git", "describe", "--always", "--dirty").Output()
		if err == nil {
			*commit = strings.TrimSpace(string(out))
		} else {
			*commit = "unknown"
		}
	}
	ts := map[string]*table{}
	if flag.NArg() == 0 {
		if err := parse(os.Stdin, ts); err != nil {
			fmt.Fprintln(os.Stderr, "benchtable:", err)
			os.Exit(1)
		}
	}
	for _, name := range flag.Args() {
		f, err := os.Open(name)
		if err != nil {
			fmt.Fprintln(os.Stderr, "benchtable:", err)
			os.Exit(1)
		}
		err = parse(f, ts)
		f.Close()
		if err != nil {
			fmt.Fprintln(os.Stderr, "benchtable:", name+":", err)
			os.Exit(1)
		}
	}
	if len(ts) == 0 {
		fmt.Fprintln(os.Stderr, "benchtable: no BENCH14 or creates: line in the input")
		os.Exit(1)
	}
	render(os.Stdout, ts, machine(), time.Now().UTC().Format("2006-01-02 15:04 UTC"), *commit)
}
