package alarms

import (
	"context"
	"fmt"
	"net/http"
	"sort"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/fsm"
)

// Loop timing: a pass on every change and every 5 s, at most one per
// quarter second, because a burst of thousands of registrations would
// otherwise recompute alarms per write.
const (
	idleEvery = 5 * time.Second
	debounce  = 250 * time.Millisecond
)

// Config is what an Alarmer needs.
type Config struct {
	State    State
	Proposer Proposer
	Clock    Clock
	Webhooks []string // receivers' URLs; none is fine (alarms are still recorded)
	// Alertmanagers are Alertmanagers' base URLs: each transition is posted
	// to BASE/api/v2/alerts, and every firing alarm again each Resend.
	Alertmanagers []string
	Resend        time.Duration // DefaultResend when zero
	// Cluster, when set, is the cluster label of alerts sent to
	// Alertmanagers.
	Cluster string
	// ExternalURL is this server's API URL, sent as the message's
	// externalURL and generatorURL.
	ExternalURL string
	Client      *http.Client // http.DefaultClient when nil
	// AlertmanagerClient posts to the Alertmanagers (Client when nil): see
	// AlertmanagerClient for one trusting a CA file.
	AlertmanagerClient *http.Client
	// CountDelivery, when set, is called once per delivery attempt with one
	// of the Delivery* results (the server's metric).
	CountDelivery func(result string)
	// Extra, when set, derives more firing alarms from the state, at now:
	// conditions whose judgement needs code this package may not import
	// (the HA reservation needs the scheduler: chime/server/hapolicy).
	// Each alarm needs Name, Severity, Labels, Summary, Description and
	// StartsAt; the alarmer adds alertname, severity and the fingerprint.
	Extra  func(now time.Time) ([]structs.Alarm, error)
	Logger hclog.Logger // named server.alarms by the server
}

// Alarmer records alarm transitions and delivers them. Each transition is
// written through Raft before it is sent, and marked delivered after, so a
// new leader sends what the old one did not finish and nothing twice (at
// least once if a leader dies between the two).
type Alarmer struct {
	state         State
	gave          gaveUpLog
	propose       Proposer
	clock         Clock
	webhooks      []string
	alertmanagers []string
	resend        time.Duration
	cluster       string
	externalURL   string
	client        *http.Client
	amClient      *http.Client
	countDelivery func(string)
	extra         func(time.Time) ([]structs.Alarm, error)
	log           hclog.Logger

	mu       sync.Mutex
	heldSeen map[string]time.Time // held migration (heldKey) → when this leader first saw it held
}

// New returns an Alarmer.
func New(cfg Config) *Alarmer {
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if cfg.Client == nil {
		cfg.Client = http.DefaultClient
	}
	if cfg.AlertmanagerClient == nil {
		cfg.AlertmanagerClient = cfg.Client
	}
	if cfg.Resend <= 0 {
		cfg.Resend = DefaultResend
	}
	return &Alarmer{state: cfg.State, propose: cfg.Proposer, clock: cfg.Clock, webhooks: cfg.Webhooks,
		alertmanagers: cfg.Alertmanagers, resend: cfg.Resend, cluster: cfg.Cluster, amClient: cfg.AlertmanagerClient,
		externalURL: cfg.ExternalURL, client: cfg.Client, countDelivery: cfg.CountDelivery, extra: cfg.Extra, log: cfg.Logger,
		heldSeen: map[string]time.Time{}}
}

// heldSince returns, for every VM held now (migration outcome unknown),
// when this leader first saw it held, on its own clock (uniqueness rule
// 8: no bound is measured on another server's timestamp), and forgets
// the holds that ended.
func (a *Alarmer) heldSince(vms []structs.VM, now time.Time) map[string]time.Time {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := map[string]time.Time{}
	for _, v := range vms {
		if !v.Held() {
			continue
		}
		k := heldKey(v)
		if _, ok := a.heldSeen[k]; !ok {
			a.heldSeen[k] = now
		}
		out[k] = a.heldSeen[k]
	}
	for k := range a.heldSeen {
		if _, ok := out[k]; !ok {
			delete(a.heldSeen, k)
		}
	}
	return out
}

func firingSet(recs []fsm.AlarmRecord) map[string]bool {
	out := map[string]bool{}
	for _, r := range recs {
		if r.Alarm.Status == "firing" {
			out[r.Alarm.Fingerprint] = true
		}
	}
	return out
}

// Firing lists the alarms recorded as firing in the replicated state,
// sorted by fingerprint (never nil).
func (a *Alarmer) Firing() ([]structs.Alarm, error) {
	recs, err := a.state.Alarms()
	if err != nil {
		return nil, fmt.Errorf("read alarms: %w", err)
	}
	out := []structs.Alarm{}
	for _, r := range recs {
		if r.Alarm.Status == "firing" {
			out = append(out, r.Alarm)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Fingerprint < out[j].Fingerprint })
	return out, nil
}

// Run records transitions and delivers them until ctx ends (leadership
// lost), and re-sends the firing alarms to the Alertmanagers each Resend.
func (a *Alarmer) Run(ctx context.Context) {
	a.mu.Lock()
	a.heldSeen = map[string]time.Time{} // a new term counts every hold afresh
	a.mu.Unlock()
	if len(a.alertmanagers) > 0 {
		go a.resendLoop(ctx)
	}
	for {
		ch, _ := a.state.Changed()
		if err := a.Step(ctx); err != nil && ctx.Err() == nil {
			a.log.Warn("alarm pass failed", "error", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-ch:
		case <-time.After(idleEvery):
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(debounce):
		}
	}
}

// Step compares the alarms the state implies with the recorded ones,
// records each transition through Raft, then delivers every transition
// not yet recorded as delivered (also those a previous leader left) and
// records its delivery. A transition that reached no receiver is still
// recorded as delivered, with an error logged: retrying happens inside one
// delivery, not across passes.
func (a *Alarmer) Step(ctx context.Context) error {
	nodes := a.state.NodesView()
	tasks, err := a.state.Tasks()
	if err != nil {
		return fmt.Errorf("read tasks: %w", err)
	}
	recs, err := a.state.Alarms()
	if err != nil {
		return fmt.Errorf("read alarms: %w", err)
	}
	vms, err := a.state.HeldVMs()
	if err != nil {
		return fmt.Errorf("read held vms: %w", err)
	}
	now := a.clock.Now().UTC()
	current := append(Derive(nodes, tasks, now), DeriveHeld(vms, nodes, a.heldSince(vms, now), firingSet(recs), now)...)
	if log, ok := a.state.(EventLog); ok {
		evs, err := a.gave.read(log)
		if err != nil {
			return fmt.Errorf("read events: %w", err)
		}
		current = append(current, DeriveGaveUp(nodes, vms, evs)...)
	}
	sort.Slice(current, func(i, j int) bool { return current[i].Fingerprint < current[j].Fingerprint })
	if a.extra != nil {
		more, err := a.extra(now)
		if err != nil {
			return fmt.Errorf("derive alarms: %w", err)
		}
		current = WithExtra(current, more)
	}
	for _, al := range Transitions(current, recs, now) {
		if _, err := a.propose.Propose(ctx, "", fsm.CmdAlarm, fsm.AlarmTransition{Alarm: al}); err != nil {
			return fmt.Errorf("record alarm %s %s: %w", al.Name, al.Status, err)
		}
	}
	if recs, err = a.state.Alarms(); err != nil {
		return fmt.Errorf("read alarms: %w", err)
	}
	for _, r := range recs {
		if r.Delivered || ctx.Err() != nil {
			continue
		}
		al := r.Alarm
		a.log.Info("alarm", "name", al.Name, "status", al.Status, "summary", al.Summary)
		ok := true
		for _, url := range a.webhooks {
			ok = a.deliver(ctx, url, al) && ok
		}
		ok = a.pushAlertmanagers(ctx, []structs.Alarm{al}, deliveryAttempts) && ok
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if !ok {
			a.log.Error("alarm not delivered to every receiver", "alarm", al.Name, "status", al.Status)
		}
		if _, err := a.propose.Propose(ctx, "", fsm.CmdAlarmSent, fsm.AlarmDelivered{Fingerprint: al.Fingerprint, Status: al.Status}); err != nil {
			a.log.Warn("record alarm delivery failed", "alarm", al.Name, "error", err)
		}
	}
	return nil
}
