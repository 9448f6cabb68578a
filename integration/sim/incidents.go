package sim

import (
	"fmt"
	"strings"
	"time"

	"github.com/chime-ha/chime/chime/structs"
)

// InvIncidents (6): at the end of a run, no incident is open whose node is
// back (normal, drained or removed) and whose VMs all run again (or were
// stopped or deleted), its conflict alarm cleared: the FSM judges an
// incident again on every write about its node or VMs, so one left open
// in that state is a write path the tracker misses (docs/incidents.md).
const InvIncidents Invariant = "6-incidents"

// finalIncidents checks InvIncidents on the leader's state.
func (c *Checker) finalIncidents(l *Server) {
	open, err := l.FSM.Incidents(structs.IncidentOpen, "")
	if err != nil {
		c.report(InvIncidents, "read incidents: "+err.Error())
		return
	}
	for _, inc := range open {
		if why := c.shouldResolve(l, inc); why != "" {
			c.report(InvIncidents, fmt.Sprintf("incident %d (%s) is open, but %s", inc.ID, inc.Summary, why))
		}
	}
}

// shouldResolve says why an open incident meets its resolution rule ("":
// it does not).
func (c *Checker) shouldResolve(l *Server, inc structs.Incident) string {
	node := "it is a VM incident"
	if inc.VMID == "" {
		n, err := l.FSM.Node(inc.NodeID)
		switch {
		case err != nil || n == nil:
			node = "its node was removed"
		case n.MonitorState == structs.MonitorNormal:
			node = "its node is normal"
		case n.ManagementState == structs.NodeDrained:
			node = "its node is drained"
		default:
			return ""
		}
	}
	for _, a := range inc.Alarms {
		if inc.Kind == structs.IncidentUniquenessConflict && a.Status == "firing" {
			return ""
		}
	}
	for _, iv := range inc.VMs {
		if !iv.RecoveredAt.IsZero() {
			continue
		}
		v, err := l.FSM.VM(iv.VMID)
		if err != nil || v == nil || v.DesiredState != structs.DesiredRunning {
			continue // deleted or stopped: recovered
		}
		if v.NodeID == "" || v.Held() || v.Observed == nil || v.Observed.State != structs.StateRunning ||
			!v.ObservationCurrent(v.Observed.NodeID, v.Observed.Generation) {
			return ""
		}
		if n, err := l.FSM.Node(v.NodeID); err != nil || n == nil || n.MonitorState != structs.MonitorNormal {
			return ""
		}
	}
	return node + " and every VM it affects runs again"
}

// incidentsGolden is the incidents section of the golden log ("" when
// none opened): one line per incident, oldest first, with its timeline's
// entry kinds.
func (s *Sim) incidentsGolden() string {
	l := s.Cluster.leader
	if l == nil {
		return ""
	}
	all, err := l.FSM.Incidents("", "")
	if err != nil {
		return "## incidents\nread incidents: " + err.Error() + "\n"
	}
	if len(all) == 0 {
		return ""
	}
	names := s.names()
	var b strings.Builder
	b.WriteString("## incidents (leader's state)\n")
	for i := len(all) - 1; i >= 0; i-- {
		inc := all[i]
		fmt.Fprintf(&b, "%s incident %d %s %s node=%s: %s; ttd %s", strings.TrimSpace(stamp(inc.DetectedAt.Sub(Epoch))),
			inc.ID, inc.Kind, inc.State, inc.NodeID, inc.Summary, inc.TimeToDetect.Round(time.Millisecond))
		if inc.State == structs.IncidentResolved {
			fmt.Fprintf(&b, ", ttr %s (%s)", inc.TimeToRecover.Round(time.Millisecond), inc.Resolution)
		}
		var vms []string
		for _, v := range inc.VMs {
			out := "not recovered"
			if v.Outcome != "" {
				out = v.Outcome
				if v.RecoveredOn != "" {
					out += " on " + v.RecoveredOn
				}
			}
			vms = append(vms, v.VMID+" "+out)
		}
		if len(vms) > 0 {
			fmt.Fprintf(&b, "; vms: %s", strings.Join(vms, ", "))
		}
		var kinds []string
		for _, e := range inc.Timeline {
			kinds = append(kinds, e.Kind)
		}
		fmt.Fprintf(&b, "; timeline: %s", strings.Join(kinds, " "))
		if inc.Dropped > 0 {
			fmt.Fprintf(&b, " (+%d dropped)", inc.Dropped)
		}
		b.WriteString("\n")
	}
	return strings.ReplaceAll(names.Replace(b.String()), s.cfg.Dir, "$SIMDIR")
}
