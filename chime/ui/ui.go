// Package ui is the web console: plain HTML, CSS and JavaScript embedded in
// the binary and served by every server at /ui/. The files hold no data:
// the page reads and writes through the JSON API with the user's token
// (X-Chime-Token) and follows changes with blocking queries.
package ui

import (
	"embed"
	"io/fs"
	"net/http"
)

//go:embed static
var static embed.FS

// Prefix is the path the console is served under.
const Prefix = "/ui/"

// Handler serves the console's files under Prefix.
func Handler() http.Handler {
	sub, err := fs.Sub(static, "static")
	if err != nil {
		panic("ui: embedded files: " + err.Error()) // the embed directive guarantees the directory
	}
	files := http.StripPrefix(Prefix, http.FileServer(http.FS(sub)))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-cache")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Header().Set("Content-Security-Policy", "default-src 'self'; frame-ancestors 'none'")
		files.ServeHTTP(w, r)
	})
}
