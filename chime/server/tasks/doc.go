// Package tasks is the leader's task runner: it advances the replicated
// migrate, evacuate and drain tasks one step at a time, deciding every
// step from the replicated task and VM records only. A new leader's runner
// therefore continues exactly where the old one stopped.
package tasks
