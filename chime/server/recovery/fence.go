package recovery

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/fsm"
)

// fenceIfDue runs the fence command for the unreachable node n unless an
// attempt is in flight, backing off, or the attempts of this episode are
// spent. Under Run the attempt runs on its own goroutine.
func (r *Recoverer) fenceIfDue(ctx context.Context, n structs.Node) {
	if r.fencer == nil {
		return
	}
	now := r.clock.Now()
	episode := n.StateSince.String()
	r.mu.Lock()
	at := r.fences[n.ID]
	if at == nil || at.key != episode {
		at = &attempt{key: episode}
		r.fences[n.ID] = at
	}
	if at.inFlight || at.gaveUp || now.Before(at.next) {
		r.mu.Unlock()
		return
	}
	at.inFlight = true
	at.count++
	count, async := at.count, r.async
	r.mu.Unlock()
	run := func() {
		err := r.fence(ctx, n, fmt.Sprintf("automatic, attempt %d of %d", count, r.maxFence))
		r.mu.Lock()
		at.inFlight = false
		if err != nil {
			at.next = r.clock.Now().Add(backoff(count))
			at.gaveUp = count >= r.maxFence
		}
		give := err != nil && at.gaveUp
		r.mu.Unlock()
		if err == nil {
			select { // the restarts need not wait for the next tick
			case r.kick <- struct{}{}:
			default:
			}
		}
		if give {
			msg := fmt.Sprintf("node %s: fence command failed %d times; automatic HA waits for its isolation lease (if any), its return, or an operator (`chime node fence %s`, or drain + rebuild --confirm-fenced)",
				n.Name, count, n.Name)
			if _, perr := r.propose.Propose(ctx, "", fsm.CmdEvent, fsm.AppendEvent{Event: structs.Event{Kind: EventFenceGaveUp, NodeID: n.ID, Message: msg}}); perr != nil {
				r.log.Warn("record fence.gave_up failed", "node", n.Name, "error", perr)
			}
		}
	}
	if async {
		r.wg.Go(run)
		return
	}
	run()
}

// forgetFence drops the fence attempts of a node that is not unreachable
// (the episode is over).
func (r *Recoverer) forgetFence(nodeID string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if at := r.fences[nodeID]; at != nil && !at.inFlight {
		delete(r.fences, nodeID)
	}
}

// FenceNow runs the fence command for the node now (`chime node fence`):
// its outcome goes into the event log, and on success the node is
// recorded fenced (and unreachable). It returns the command's output.
func (r *Recoverer) FenceNow(ctx context.Context, n structs.Node) (string, error) {
	if r.fencer == nil {
		return "", structs.Conflict("fence_command", "no fence command configured on the servers (chime server --fence-command)")
	}
	out, err := r.fenceOutput(ctx, n, "on demand (chime node fence)")
	if err != nil && structs.AsError(err) == nil {
		return out, structs.Conflict("fence_command", "%v; output: %s", err, strings.TrimSpace(out))
	}
	return out, err
}

func (r *Recoverer) fence(ctx context.Context, n structs.Node, how string) error {
	_, err := r.fenceOutput(ctx, n, how)
	return err
}

// fenceOutput runs the fence command once and records its outcome.
func (r *Recoverer) fenceOutput(ctx context.Context, n structs.Node, how string) (string, error) {
	start := r.clock.Now()
	out, err := r.fencer.Fence(ctx, n)
	took := r.clock.Now().Sub(start).Round(time.Millisecond)
	shown := strings.TrimSpace(out)
	if len(shown) > fenceOutputMaxLen {
		shown = shown[:fenceOutputMaxLen] + "…"
	}
	if shown == "" {
		shown = "no output"
	}
	if err != nil {
		r.log.Warn("fence command failed", "node", n.Name, "how", how, "took", took.String(), "error", err, "output", shown)
		msg := fmt.Sprintf("node %s: fence command failed (%s) after %s: %v; output: %s", n.Name, how, took, err, shown)
		if _, perr := r.propose.Propose(ctx, "", fsm.CmdEvent, fsm.AppendEvent{Event: structs.Event{Kind: EventFenceFailed, NodeID: n.ID, Message: msg}}); perr != nil {
			r.log.Warn("record fence.failed failed", "node", n.Name, "error", perr)
		}
		return out, fmt.Errorf("fence node %s: %w", n.Name, err)
	}
	r.log.Info("fence command succeeded", "node", n.Name, "how", how, "took", took.String())
	by := fmt.Sprintf("fence command (%s, %s)", how, took)
	if _, err := r.propose.Propose(ctx, "", fsm.CmdSetNodeFlags, fsm.SetNodeFlags{NodeID: n.ID, FencedBy: by, FenceUnreachable: true}); err != nil {
		return out, fmt.Errorf("record node %s fenced: %w", n.Name, err)
	}
	msg := fmt.Sprintf("node %s: fence command succeeded (%s) after %s; output: %s", n.Name, how, took, shown)
	if _, err := r.propose.Propose(ctx, "", fsm.CmdEvent, fsm.AppendEvent{Event: structs.Event{Kind: EventFenceOK, NodeID: n.ID, Message: msg}}); err != nil {
		return out, fmt.Errorf("record fence.succeeded of node %s: %w", n.Name, err)
	}
	return out, nil
}
