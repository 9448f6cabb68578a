package ui

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestHandler serves the embedded files under the prefix with their types
// and the headers that keep the page from being framed or sniffed.
func TestHandler(t *testing.T) {
	srv := httptest.NewServer(http.StripPrefix("", Handler()))
	defer srv.Close()
	for _, tc := range []struct {
		path, wantType, wantBody string
		wantStatus               int
	}{
		{"/ui/", "text/html", `<script type="module" src="app.js">`, http.StatusOK},
		{"/ui/app.js", "javascript", "X-Chime-Token", http.StatusOK},
		{"/ui/style.css", "text/css", "@media", http.StatusOK},
		{"/ui/nope.js", "", "", http.StatusNotFound},
	} {
		t.Run(tc.path, func(t *testing.T) {
			resp, err := http.Get(srv.URL + tc.path)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != tc.wantStatus {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.wantStatus)
			}
			if tc.wantStatus != http.StatusOK {
				return
			}
			if ct := resp.Header.Get("Content-Type"); !strings.Contains(ct, tc.wantType) {
				t.Errorf("Content-Type %q, want %q", ct, tc.wantType)
			}
			if !strings.Contains(string(body), tc.wantBody) {
				t.Errorf("body lacks %q", tc.wantBody)
			}
			if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "frame-ancestors 'none'") {
				t.Errorf("Content-Security-Policy %q", csp)
			}
		})
	}
}
