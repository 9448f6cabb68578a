package structs

// Version is chime's version, the same for every role: `chime --version`
// prints it and agents report it at registration. `just build` sets it
// with -ldflags "-X github.com/chime-ha/chime/chime/structs.Version=...".
var Version = "0.1.0-dev"
