package alarms

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/chime-ha/chime/chime/structs"
)

// WebhookMessage is the Alertmanager webhook body (version "4"), one
// alarm per message.
type WebhookMessage struct {
	Version           string            `json:"version"`
	GroupKey          string            `json:"groupKey"`
	TruncatedAlerts   int               `json:"truncatedAlerts"`
	Status            string            `json:"status"`
	Receiver          string            `json:"receiver"`
	GroupLabels       map[string]string `json:"groupLabels"`
	CommonLabels      map[string]string `json:"commonLabels"`
	CommonAnnotations map[string]string `json:"commonAnnotations"`
	ExternalURL       string            `json:"externalURL"`
	Alerts            []WebhookAlert    `json:"alerts"`
}

// WebhookAlert is one alert of a WebhookMessage.
type WebhookAlert struct {
	Status       string            `json:"status"`
	Labels       map[string]string `json:"labels"`
	Annotations  map[string]string `json:"annotations"`
	StartsAt     string            `json:"startsAt"`
	EndsAt       string            `json:"endsAt"`
	GeneratorURL string            `json:"generatorURL"`
	Fingerprint  string            `json:"fingerprint"`
}

// Delivery results, counted through Config.CountDelivery.
const (
	DeliveryDelivered = "delivered" // a receiver answered 2xx
	DeliveryRefused   = "refused"   // a receiver answered 4xx: dropped
	DeliveryRetry     = "retry"     // 5xx or a network error: tried again
	DeliveryFailed    = "failed"    // gave up after every attempt
)

// deliveryAttempts and the back-off bounds: 8 attempts over about a minute.
const (
	deliveryAttempts = 8
	firstBackoff     = 500 * time.Millisecond
	maxBackoff       = 30 * time.Second
	attemptTimeout   = 10 * time.Second
)

// message builds the webhook body for one alarm transition.
func message(al structs.Alarm, externalURL string) WebhookMessage {
	ends := "0001-01-01T00:00:00Z"
	if al.Status == "resolved" {
		ends = al.EndsAt.UTC().Format(time.RFC3339)
	}
	ann := map[string]string{"summary": al.Summary, "description": al.Description}
	return WebhookMessage{
		Version: "4", GroupKey: "{}:{alertname=\"" + al.Name + "\"}", Status: al.Status, Receiver: "chime",
		GroupLabels: map[string]string{"alertname": al.Name}, CommonLabels: al.Labels, CommonAnnotations: ann,
		ExternalURL: externalURL,
		Alerts: []WebhookAlert{{Status: al.Status, Labels: al.Labels, Annotations: ann,
			StartsAt: al.StartsAt.UTC().Format(time.RFC3339), EndsAt: ends,
			GeneratorURL: externalURL + "/v1/alarms", Fingerprint: al.Fingerprint}},
	}
}

// deliver posts one alarm to one webhook receiver (send).
func (a *Alarmer) deliver(ctx context.Context, url string, al structs.Alarm) bool {
	body, err := json.Marshal(message(al, a.externalURL))
	if err != nil {
		a.log.Error("encode alarm failed", "alarm", al.Name, "error", err)
		return false
	}
	return a.send(ctx, a.client, url, body, "webhook", deliveryAttempts)
}

// send posts a body with up to attempts tries and back-off: 2xx is
// delivered, 4xx is dropped (the receiver refuses it), 5xx and network
// errors retry.
func (a *Alarmer) send(ctx context.Context, client *http.Client, url string, body []byte, kind string, attempts int) bool {
	backoff := firstBackoff
	for attempt := 1; attempt <= attempts; attempt++ {
		retry, err := a.post(ctx, client, url, body)
		if err == nil {
			a.count(DeliveryDelivered)
			return true
		}
		if !retry {
			a.count(DeliveryRefused)
			a.log.Warn("alarm refused by receiver", "receiver", kind, "url", url, "error", err)
			return false
		}
		a.count(DeliveryRetry)
		a.log.Warn("alarm delivery failed, retrying", "receiver", kind, "url", url, "attempt", attempt, "error", err)
		if attempt == attempts {
			break
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, maxBackoff)
	}
	a.count(DeliveryFailed)
	a.log.Error("alarm delivery gave up", "receiver", kind, "url", url)
	return false
}

// post sends one attempt. It returns nil when the receiver took it, and
// otherwise whether another attempt can help: a 4xx answer (the receiver
// refuses the body) or an unusable URL will not get better.
func (a *Alarmer) post(ctx context.Context, client *http.Client, url string, body []byte) (retry bool, err error) {
	cctx, cancel := context.WithTimeout(ctx, attemptTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(cctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return false, fmt.Errorf("alarm request to %s: %w", url, err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return true, err
	}
	resp.Body.Close()
	switch resp.StatusCode / 100 {
	case 2:
		return false, nil
	case 4:
		return false, fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	return true, fmt.Errorf("HTTP %d", resp.StatusCode)
}

func (a *Alarmer) count(result string) {
	if a.countDelivery != nil {
		a.countDelivery(result)
	}
}
