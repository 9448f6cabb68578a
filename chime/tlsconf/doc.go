// Package tlsconf makes and loads chime's TLS material and builds the
// tls.Config of every listener and dialer from it.
//
// The model is Nomad's: one cluster CA signs every certificate, and a
// certificate carries its holder's role as a DNS name, <role>.<cluster>.chime
// (server.global.chime, agent.global.chime, cli.global.chime). A listener
// requires a client certificate from the CA (verify_incoming) and checks the
// caller's role against the roles it admits; a dialer verifies the peer's
// certificate against the CA and checks that it carries the role it meant to
// reach (verify_outgoing, verify_server_hostname). A process takes its own
// cluster name from its own certificate, so there is no cluster setting to
// get wrong at run time.
//
// PeerRole reads the verified role of a connection; WithPeerRole and
// PeerRoleFrom carry it in a request's context for the HTTP handlers.
//
// The package depends on the standard library only.
package tlsconf
