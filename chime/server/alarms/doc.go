// Package alarms is the leader's alarmer: it derives the alarms the
// replicated state implies, records each transition (firing, resolved)
// through Raft, and delivers it to webhook receivers in the Prometheus
// Alertmanager webhook format (version 4) and to Alertmanagers through
// their API (POST /api/v2/alerts), re-sending firing alarms on an interval.
package alarms
