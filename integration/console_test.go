package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/chime/tlsconf"
	"github.com/chime-ha/chime/integration/wait"
)

// TestConsole drives the web console in a real headless Chromium against
// the lab fleet (mutual TLS, ACLs on, real libvirt VMs): it logs in with a
// token, loads every page and keeps a screenshot of each, sees a migrate
// started from the CLI appear and succeed on the tasks page (a blocking
// query on the task index), migrates a VM and drains its node from the UI (each through the confirmation dialog),
// and sees the placement and the node's state change on the page without
// a reload. The VM runs on exactly one host at the end.
//
// The API requires a client certificate of the cluster's CA from every
// caller, browsers included (docs/console.md#tls): the test's loopback
// proxy holds the cli certificate as an operator's browser would hold it
// in its certificate store, and forwards to server 0 unchanged (the token
// is the page's own X-Chime-Token header).
func TestConsole(t *testing.T) {
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		if inCI() {
			t.Fatalf("CI=true but chromium is missing (scripts/install-deps.sh installs it): %v", err)
		}
		t.Skipf("needs chromium (skipped outside CI): %v", err)
	}
	f := newFleet(t)
	shots := filepath.Join(os.TempDir(), "chime-console-"+fleetPrefix)
	if err := os.MkdirAll(shots, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshots in %s", shots)

	vm := f.createVM(t, "ui-web", "--ha") // ha: the nodes page shows its failover plan
	src, _, _ := f.waitRunningOnOneHost(t, vm.ID, 90*time.Second)
	srcName := f.lab.Hosts[src].Name
	t.Logf("ui-web running on %s", srcName)

	target, err := url.Parse(f.ss.addr(0))
	if err != nil {
		t.Fatal(err)
	}
	proxy := httputil.NewSingleHostReverseProxy(target)
	proxy.Transport = &http.Transport{TLSClientConfig: f.tls.cli.ClientConfig(tlsconf.RoleServer)}
	front := httptest.NewServer(proxy)
	defer front.Close()

	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(chromium),
		chromedp.NoSandbox, chromedp.WindowSize(1280, 900))
	actx, acancel := chromedp.NewExecAllocator(context.Background(), opts...)
	defer acancel()
	ctx, cancel := chromedp.NewContext(actx, chromedp.WithLogf(t.Logf))
	defer cancel()
	ctx, cancel2 := context.WithTimeout(ctx, 8*time.Minute)
	defer cancel2()

	if err := chromedp.Do(ctx, chromedp.Navigate("about:blank")); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	run := func(what string, actions ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		sctx, scancel := context.WithTimeout(ctx, 90*time.Second)
		defer scancel()
		if err := chromedp.Do(sctx, actions...); err != nil {
			html, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`document.body ? document.body.innerText : ""`))
			t.Fatalf("%s: %v (the page says %q)", what, err, html)
		}
	}
	// go shows a page: a change of the hash, which the page follows
	// (a Navigate to the same document would wait for a load that never comes).
	goPage := func(page string) chromedp.Action[chromedp.Void] {
		return chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
			_, err := chromedp.Evaluate[string](`location.hash = "`+page+`"`)(ctx, tg)
			return err
		})
	}
	shot := func(name string) {
		t.Helper()
		run("settle", chromedp.Sleep(300*time.Millisecond))
		buf, err := chromedp.Run(ctx, chromedp.FullScreenshot(90))
		if err != nil {
			t.Fatalf("screenshot %s: %v", name, err)
		}
		p := filepath.Join(shots, name+".jpg") // FullScreenshot below 100 % quality is a JPEG
		if err := os.WriteFile(p, buf, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("screenshot %s (%d bytes)", p, len(buf))
	}

	// text reads an element's text in one evaluation: the page re-renders
	// on every change, and a node looked up first and read after can be
	// gone by then.
	text := func(sel string) string {
		t.Helper()
		q, _ := json.Marshal(sel)
		v, err := chromedp.Run(ctx, chromedp.Evaluate[string](`(document.querySelector(`+string(q)+`) || {}).textContent || ""`))
		if err != nil {
			t.Fatalf("text of %s: %v", sel, err)
		}
		return strings.TrimSpace(v)
	}
	mark := func() { // a marker on window: a reload would drop it
		if _, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`window.chimeNoReload = true`)); err != nil {
			t.Fatalf("mark the page: %v", err)
		}
	}

	// Without a token the page shows the API's refusal; with one, data.
	run("open the console", chromedp.Navigate(front.URL+"/ui/#cluster"), chromedp.Sleep(time.Second),
		chromedp.WaitVisible(chromedp.CSS("#error")))
	refusal := text("#error")
	if !strings.Contains(refusal, "401") && !strings.Contains(refusal, "403") {
		t.Errorf("console without a token shows %q, want the API's 401/403", refusal)
	}
	run("log in", chromedp.SendKeys(chromedp.CSS("#token"), f.ss.token), chromedp.Click(chromedp.CSS("#login button")),
		chromedp.WaitVisible(chromedp.CSS("#leader")))
	mark()

	for _, page := range []struct{ name, ready string }{
		{"cluster", "#leader"}, {"nodes", "span.mgmt"}, {"vms", "span.vm-node"}, {"tasks", "table"},
		{"alarms", "table"}, {"incidents", "h2"}, {"events", "table"},
	} {
		run("page "+page.name, goPage(page.name), chromedp.WaitVisible(chromedp.CSS(`#page[data-loaded="`+page.name+`"] `+page.ready)))
		if page.name == "incidents" {
			shot("incidents-empty") // "incidents" is the one with an incident, below
			continue
		}
		shot(page.name)
	}
	// The nodes page's failover plan: ui-web would restart on another node.
	run("failover plan", goPage("nodes"), chromedp.WaitVisible(chromedp.CSS(`span.failover-target[data-vm="ui-web"]`)))
	if target := text(`span.failover-target[data-vm="ui-web"]`); target == srcName || target == "nowhere" || target == "" {
		t.Errorf("the failover plan restarts ui-web (on %s) on %q, want another node", srcName, target)
	}
	if res := text("#reservation"); !strings.Contains(res, "ok") {
		t.Errorf("the nodes page shows the HA reservation as %q, want ok", res)
	}
	// The phone-sized view of the VMs page.
	run("phone size", chromedp.EmulateViewport(390, 844), goPage("vms"),
		chromedp.WaitVisible(chromedp.CSS("span.vm-node")))
	shot("vms-phone")
	run("laptop size", chromedp.EmulateViewport(1280, 900))
	mark()

	nodeOfVM := func() string {
		return text(`span.vm-node[data-vm="ui-web"]`)
	}
	noReload := func(what string) {
		ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`window.chimeNoReload === true`))
		if err != nil || !ok {
			t.Fatalf("%s: the page was reloaded", what)
		}
	}

	// The tasks page is live (a blocking query on the task index): a
	// migrate started from the CLI shows up on it, and its state changes
	// to succeeded, without a reload. ui-web's node from here on is the
	// migrate's destination.
	run("tasks page", goPage("tasks"), chromedp.WaitVisible(chromedp.CSS(`#page[data-loaded="tasks"] table`)))
	mark()
	var task structs.Task
	start := time.Now()
	to := f.lab.Hosts[(src+1)%len(f.lab.Hosts)].Name
	if err := f.chimeJSON(&task, "vm", "migrate", vm.Name, "--to", to); err != nil {
		t.Fatalf("vm migrate ui-web --to %s: %v", to, err)
	}
	taskState := func() string { return text(`span.task-state[data-task="` + task.ID + `"]`) }
	wait.For(t, 30*time.Second, "the tasks page shows the migrate task", func() (bool, string) {
		s := taskState()
		return s != "", s
	})
	t.Logf("the tasks page showed the migrate task %s (%s) %s after the CLI started it", task.ID[:8], taskState(), time.Since(start).Round(time.Millisecond))
	wait.For(t, 3*time.Minute, "the tasks page shows the migrate task succeeded", func() (bool, string) {
		s := taskState()
		return s == structs.TaskSucceeded, s
	})
	noReload("tasks")
	t.Logf("the tasks page showed the migrate task succeeded %s after the CLI started it", time.Since(start).Round(time.Millisecond))
	shot("tasks-live")
	src, _, _ = f.waitRunningOnOneHost(t, vm.ID, 90*time.Second)
	if srcName = f.lab.Hosts[src].Name; srcName != to {
		t.Fatalf("after the migrate to %s ui-web runs on %s", to, srcName)
	}

	// Migrate from the VMs page.
	run("vms page", goPage("vms"), chromedp.WaitVisible(chromedp.CSS(`span.vm-node[data-vm="ui-web"]`)))
	if got := nodeOfVM(); got != srcName {
		t.Fatalf("the VMs page shows ui-web on %q, want %s", got, srcName)
	}
	start = time.Now()
	run("migrate ui-web", chromedp.Click(chromedp.CSS(`button[data-action="vm-migrate"][data-arg="ui-web"]`)),
		chromedp.WaitVisible(chromedp.CSS("#confirm")))
	shot("confirm-migrate")
	run("confirm the migrate", chromedp.Click(chromedp.CSS("#confirm-ok")))
	var dstName string
	wait.For(t, 3*time.Minute, "the VMs page shows ui-web on another node", func() (bool, string) {
		dstName = nodeOfVM()
		return dstName != srcName && dstName != "" && dstName != "—", "on " + dstName
	})
	noReload("migrate")
	t.Logf("the page showed ui-web on %s %s after the migrate click", dstName, time.Since(start).Round(time.Millisecond))
	f.waitRunningOnOneHost(t, vm.ID, 90*time.Second)

	// Drain ui-web's new node from the nodes page.
	run("nodes page", goPage("nodes"), chromedp.WaitVisible(chromedp.CSS(`span.mgmt[data-node="`+dstName+`"]`)))
	start = time.Now()
	run("drain "+dstName, chromedp.Click(chromedp.CSS(`button[data-action="node-drain"][data-arg="`+dstName+`"]`)),
		chromedp.WaitVisible(chromedp.CSS("#confirm")), chromedp.Click(chromedp.CSS("#confirm-ok")))
	wait.For(t, 3*time.Minute, "the nodes page shows "+dstName+" drained", func() (bool, string) {
		s := text(`span.mgmt[data-node="` + dstName + `"]`)
		return s == structs.NodeDrained, s
	})
	noReload("drain")
	t.Logf("the page showed %s drained %s after the drain click", dstName, time.Since(start).Round(time.Millisecond))
	shot("nodes-drained")
	run("vms page after the drain", goPage("vms"), chromedp.WaitVisible(chromedp.CSS(`#page[data-loaded="vms"] span.vm-node[data-vm="ui-web"]`)))
	mark()
	// A drain stops the node's VMs and moves nothing (docs/operations.md).
	wait.For(t, 3*time.Minute, "the VMs page shows ui-web stopped on the drained "+dstName, func() (bool, string) {
		s := text(`span.vm-state[data-vm="ui-web"]`)
		return s == "stopped", s
	})
	noReload("drain")
	t.Logf("the page showed ui-web stopped %s after the drain click", time.Since(start).Round(time.Millisecond))
	shot("vms-drained")
	if hosts, err := f.where(context.Background(), vm.ID); err != nil || len(hosts) > 0 {
		t.Errorf("after the drain ui-web runs on %v (%v), want nowhere", hosts, err)
	}
	// The rebuild dialog states its evidence and asks for confirm-fenced.
	run("rebuild dialog", goPage("nodes"), chromedp.WaitVisible(chromedp.CSS(`span.mgmt`)),
		chromedp.Click(chromedp.CSS(`button[data-action="node-rebuild"][data-arg="`+dstName+`"]`)),
		chromedp.WaitVisible(chromedp.CSS("#confirm-fenced")))
	evidence := text("#confirm-body")
	if !strings.Contains(evidence, "fenced") || !strings.Contains(evidence, "monitor state") {
		t.Errorf("rebuild dialog says %q, want its evidence (monitor state, fenced)", evidence)
	}
	shot("confirm-rebuild")
	run("cancel the rebuild", chromedp.Click(chromedp.CSS("#confirm-cancel")))

	// An incident, live: ui-web's first node (empty since the migrate)
	// loses its agent and becomes unreachable; the incidents page shows it
	// open, then resolved once the agent is back, without a reload.
	run("incidents page", goPage("incidents"), chromedp.WaitVisible(chromedp.CSS(`#page[data-loaded="incidents"] h2`)))
	mark()
	f.killAgent(src)
	start = time.Now()
	wait.For(t, 2*time.Minute, "the incidents page shows an open incident", func() (bool, string) {
		n, err := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll('span.incident[data-state="open"]').length`))
		return err == nil && n == 1, fmt.Sprint(n, err)
	})
	t.Logf("the page showed the incident of %s open %s after its agent was killed", srcName, time.Since(start).Round(time.Millisecond))
	shot("incidents-open")
	f.startAgent(src)
	start = time.Now()
	wait.For(t, 3*time.Minute, "the incidents page shows it resolved", func() (bool, string) {
		n, err := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll('span.incident[data-state="resolved"]').length`))
		return err == nil && n == 1, fmt.Sprint(n, err)
	})
	noReload("incident")
	t.Logf("the page showed it resolved %s after the agent restarted", time.Since(start).Round(time.Millisecond))
	if _, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`document.querySelector("details.incident-detail").open = true`)); err != nil {
		t.Fatalf("expand the incident: %v", err)
	}
	timeline := text(`details.incident-detail`)
	for _, want := range []string{"node.unreachable", "incident.opened", "node.normal", "incident.resolved"} {
		if !strings.Contains(timeline, want) {
			t.Errorf("the incident's timeline on the page lacks %s: %q", want, timeline)
		}
	}
	shot("incidents")
	fmt.Fprintf(os.Stderr, "console screenshots: %s\n", shots)
}
