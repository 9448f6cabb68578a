// Package api is chime's shared vocabulary: the Node, VM, Task and Event
// records, their states, the validation rules for operator input, the error
// type every HTTP endpoint returns, and the HTTP client used by the CLI, the
// agent and the tests. It imports nothing of chime's own.
package api
