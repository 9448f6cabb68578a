package main

import (
	"bufio"
	"bytes"
	"os/exec"
	"strings"
	"testing"
)

// The dependency rules of ../shared/STYLE.md and docs/architecture.md,
// checked on the real import graph (`go list`), so that an arrow pointing
// the wrong way fails `just test` instead of waiting for a review.

const module = "github.com/chime-ha/chime"

// layer says which of chime's own packages a package (or every package
// under a prefix ending in "/...") may import. Imports of sub-packages of
// itself are always allowed.
type layer struct {
	pkg   string
	allow []string
}

var layers = []layer{
	{"chime/structs", nil},
	{"gossip", nil},
	// TLS material and configs: the standard library only.
	{"chime/tlsconf", nil},
	{"chime/tlsconf/tlsconftest", []string{"chime/tlsconf"}},
	{"fsm", []string{"chime/structs"}},
	{"fsm/state", []string{"chime/structs"}},
	{"fsm/view", []string{"fsm/state", "chime/structs"}},
	// The Raft log and stable store: hashicorp/raft's interfaces and
	// bbolt, none of chime's packages.
	{"fsm/raftlog", nil},
	{"chime/ui", nil},
	// The shipped Prometheus files (embedded) and WriteConfig: the
	// standard library only.
	{"dist/prometheus", nil},
	// Test fixtures over a real FSM, for the decision cores' tests.
	{"fsm/fsmtest", []string{"fsm", "chime/structs"}},
	{"scheduler", []string{"chime/structs"}},
	{"hypervisor", []string{"chime/structs"}},
	{"chime/api", []string{"chime/structs"}},
	// The server's decision cores see state, placement and gossip through
	// interfaces of their own; never the wire or the server wiring.
	{"chime/server/...", []string{"fsm", "scheduler", "gossip", "chime/structs", "chime/server/..."}},
	// The endpoints implement the API's operations: its request and answer
	// bodies are their inputs and outputs, so they may see chime/api (its
	// types and validators), though never net/http's statuses.
	// Automatic HA sees placement, silence and the fence command through
	// interfaces of its own.
	{"chime/server/recovery", []string{"fsm", "scheduler", "chime/structs"}}, // scheduler: RestartOrder, the failover plan's order
	{"chime/server/endpoint", []string{"fsm", "scheduler", "chime/structs", "chime/api", "chime/server/..."}},
	// The HA guard answers the operator's arm/disarm and status with the
	// API's bodies, like the endpoints.
	{"chime/server/hapolicy", []string{"fsm", "chime/structs", "chime/api"}},
	{"chime/server", []string{"chime/server/...", "fsm", "fsm/raftlog", "scheduler", "gossip", "chime/structs", "chime/api", "chime/tlsconf", "chime/ui"}},
	{"chime/agent/...", []string{"hypervisor", "gossip", "chime/structs", "chime/api", "chime/agent/..."}},
	{"chime/agent", []string{"chime/agent/...", "hypervisor", "gossip", "chime/structs", "chime/api", "chime/tlsconf"}},
	{"cli", []string{"chime/server", "chime/server/...", "chime/agent", "chime/agent/...", "chime/api", "chime/structs", "chime/tlsconf", "gossip"}}, // gossip: key generation and fingerprints (chime operator gossip),
	{"chime", []string{"cli"}},
}

// httpFree are the packages whose own dependency closure, among chime's
// packages, must not reach net/http or chime/api. (hashicorp/raft and
// memberlist pull in net/http through go-metrics; that is theirs, not ours.)
var httpFree = []string{"chime/structs", "fsm", "fsm/raftlog", "scheduler", "hypervisor", "gossip", "chime/tlsconf"}

// transportFree are packages that may use chime/api's types (and so reach
// net/http through it) but must not import net/http themselves: the
// endpoints return error kinds, and only the HTTP layer picks statuses.
var transportFree = []string{"chime/server/endpoint", "chime/server/hapolicy"}

func goList(t *testing.T, args ...string) map[string][]string {
	t.Helper()
	cmd := exec.Command("go", append([]string{"list", "-f", "{{.ImportPath}} {{join .Imports \" \"}}"}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list %v: %v\n%s", args, err, stderr.String())
	}
	graph := map[string][]string{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) > 0 {
			graph[f[0]] = f[1:]
		}
	}
	return graph
}

func own(path string) (string, bool) {
	if path == module {
		return "", true
	}
	rel, ok := strings.CutPrefix(path, module+"/")
	return rel, ok
}

func matches(rule, pkg string) bool {
	if base, ok := strings.CutSuffix(rule, "/..."); ok {
		return strings.HasPrefix(pkg, base+"/")
	}
	return rule == pkg
}

// ruleFor picks the most specific layer for pkg: an exact name beats a prefix.
func ruleFor(pkg string) (layer, bool) {
	for _, l := range layers {
		if l.pkg == pkg {
			return l, true
		}
	}
	for _, l := range layers {
		if matches(l.pkg, pkg) {
			return l, true
		}
	}
	return layer{}, false
}

func TestDependenciesPointDown(t *testing.T) {
	graph := goList(t, module+"/...")
	checked := 0
	for path, imports := range graph {
		pkg, _ := own(path)
		if strings.HasPrefix(pkg, "integration") {
			continue // tests and the lab may use anything
		}
		l, ok := ruleFor(pkg)
		if !ok {
			t.Errorf("package %s has no layer: add it to layers in chime/layers_test.go and to docs/architecture.md", pkg)
			continue
		}
		checked++
		for _, imp := range imports {
			dep, ours := own(imp)
			if !ours || strings.HasPrefix(dep, pkg+"/") {
				continue
			}
			allowed := false
			for _, a := range l.allow {
				if matches(a, dep) {
					allowed = true
				}
			}
			if !allowed {
				t.Errorf("%s imports %s: not allowed (may import %v)", pkg, dep, l.allow)
			}
		}
	}
	exact := 0
	for _, l := range layers {
		if !strings.HasSuffix(l.pkg, "/...") {
			exact++
		}
	}
	if checked < exact {
		t.Fatalf("checked %d packages, expected at least %d: is go list seeing the module?", checked, exact)
	}
}

func TestNoHTTPBelowTheWire(t *testing.T) {
	for _, pkg := range httpFree {
		t.Run(pkg, func(t *testing.T) {
			graph := goList(t, "-deps", module+"/"+pkg)
			if _, ok := graph[module+"/"+pkg]; !ok {
				t.Fatalf("go list -deps did not list %s itself", pkg)
			}
			for path, imports := range graph {
				if _, ours := own(path); !ours {
					continue
				}
				for _, imp := range imports {
					if imp == "net/http" || imp == module+"/chime/api" {
						t.Errorf("%s (a dependency of %s) imports %s", path, pkg, imp)
					}
				}
			}
		})
	}
	// chime/structs is the bottom: the standard library only.
	graph := goList(t, "-deps", module+"/chime/structs")
	for path := range graph {
		if strings.Contains(strings.SplitN(path, "/", 2)[0], ".") && path != module+"/chime/structs" {
			t.Errorf("chime/structs depends on %s: it must use the standard library only", path)
		}
	}
}

func TestEndpointsImportNoNetHTTP(t *testing.T) {
	for _, pkg := range transportFree {
		graph := goList(t, module+"/"+pkg)
		imports, ok := graph[module+"/"+pkg]
		if !ok {
			t.Fatalf("go list did not list %s", pkg)
		}
		for _, imp := range imports {
			if imp == "net/http" {
				t.Errorf("%s imports net/http: statuses belong to the HTTP layer (chime/server)", pkg)
			}
		}
	}
}
