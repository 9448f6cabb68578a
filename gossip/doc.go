// Package gossip keeps chime's servers and agents in one memberlist (SWIM)
// pool: it advertises each member's role and addresses in node metadata, lets
// agents discover servers, and tells the leader whether memberlist still
// considers a node alive after direct and indirect probes.
//
// Gossip is a hint, never a verdict: nothing in this package changes a node's
// state or moves a VM. The server's node monitor combines Reachable with its
// own heartbeat timers and a direct API ping before it marks a node
// unreachable. See DESIGN.md in this directory.
package gossip
