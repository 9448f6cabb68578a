// Package api is chime's wire: the request and response bodies of the HTTP
// API, its headers, its error body (and the one mapping from an error kind
// to an HTTP status), and the HTTP client the CLI, the agent and the tests
// use. The records themselves (Node, VM, Task, ...) live in chime/structs.
package api
