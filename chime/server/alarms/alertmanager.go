package alarms

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/chime-ha/chime/chime/structs"
)

// DefaultResend is how often the leader re-sends every firing alarm to
// each Alertmanager, like Prometheus's --rules.alert.resend-delay.
const DefaultResend = time.Minute

// resendAttempts bounds one periodic re-send: the next interval tries
// again, so it does not retry for a minute as a transition does.
const resendAttempts = 2

// PostableAlert is one alert of Alertmanager's POST /api/v2/alerts body.
type PostableAlert struct {
	Labels       map[string]string `json:"labels"`
	Annotations  map[string]string `json:"annotations"`
	StartsAt     string            `json:"startsAt"`
	EndsAt       string            `json:"endsAt"`
	GeneratorURL string            `json:"generatorURL,omitempty"`
}

// alertsURL is the API endpoint under an Alertmanager's base URL (which
// may carry a path prefix, as Prometheus's alertmanager path_prefix).
func alertsURL(base string) string {
	return strings.TrimSuffix(base, "/") + "/api/v2/alerts"
}

// postable turns alarms into Alertmanager alerts at now. A firing alert
// ends at now+4×resend, as Prometheus sets it, so that Alertmanager
// resolves it on its own when no leader re-sends it; a resolved one ends
// at its recorded resolution.
func (a *Alarmer) postable(als []structs.Alarm, now time.Time) []PostableAlert {
	out := make([]PostableAlert, 0, len(als))
	for _, al := range als {
		labels := map[string]string{}
		for k, v := range al.Labels {
			labels[k] = v
		}
		labels["alertname"], labels["severity"] = al.Name, al.Severity
		if a.cluster != "" {
			labels["cluster"] = a.cluster
		}
		ends := now.Add(4 * a.resend)
		if al.Status == "resolved" {
			ends = al.EndsAt
		}
		p := PostableAlert{Labels: labels,
			Annotations: map[string]string{"summary": al.Summary, "description": al.Description},
			StartsAt:    al.StartsAt.UTC().Format(time.RFC3339Nano), EndsAt: ends.UTC().Format(time.RFC3339Nano)}
		if a.externalURL != "" {
			p.GeneratorURL = a.externalURL + "/v1/alarms"
		}
		out = append(out, p)
	}
	return out
}

// pushAlertmanagers posts alarms to every Alertmanager with up to attempts
// tries each, and reports whether all of them took it.
func (a *Alarmer) pushAlertmanagers(ctx context.Context, als []structs.Alarm, attempts int) bool {
	if len(a.alertmanagers) == 0 || len(als) == 0 {
		return true
	}
	body, err := json.Marshal(a.postable(als, a.clock.Now()))
	if err != nil {
		a.log.Error("encode alerts failed", "error", err)
		return false
	}
	ok := true
	for _, base := range a.alertmanagers {
		ok = a.send(ctx, a.amClient, alertsURL(base), body, "alertmanager", attempts) && ok
	}
	return ok
}

// resendLoop re-sends every firing alarm to the Alertmanagers each resend
// interval until ctx ends, so that they keep it active (its endsAt moves
// on) and an Alertmanager restarted empty learns it again.
func (a *Alarmer) resendLoop(ctx context.Context) {
	t := time.NewTicker(a.resend)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		firing, err := a.Firing()
		if err != nil {
			a.log.Warn("alert re-send skipped", "error", err)
			continue
		}
		if !a.pushAlertmanagers(ctx, firing, resendAttempts) && ctx.Err() == nil {
			a.log.Warn("firing alerts not re-sent to every Alertmanager", "alerts", len(firing))
		}
	}
}

// AlertmanagerClient returns the client that posts to Alertmanagers:
// http.DefaultClient without caFile, else one that verifies https
// Alertmanagers against the PEM certificates in caFile only.
func AlertmanagerClient(caFile string) (*http.Client, error) {
	if caFile == "" {
		return http.DefaultClient, nil
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("--alertmanager-ca-file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("--alertmanager-ca-file %s: no PEM certificate in it", caFile)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	return &http.Client{Transport: tr}, nil
}
