// Package dashboard is the web dashboard `hookstream serve` serves at /: a
// page and a little plain JavaScript, embedded in the binary, that call the
// same /v1 API with the browser's session cookie. Nothing is built at run
// time and nothing loads from another origin.
package dashboard

import (
	"bytes"
	"embed"
	"io/fs"
	"net/http"
	"path"
	"time"
)

//go:embed assets
var assets embed.FS

// ContentSecurityPolicy allows this origin's script, styles and API only:
// no inline script, no other origin, no framing.
const ContentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; " +
	"font-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

// Handler serves the dashboard: GET / (the page) and GET /assets/NAME.
func Handler() http.Handler {
	files, err := fs.Sub(assets, "assets")
	if err != nil {
		panic(err) // the embedded tree is fixed at build time
	}
	index, err := fs.ReadFile(files, "index.html")
	if err != nil {
		panic(err)
	}
	started := time.Now()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", ContentSecurityPolicy)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "no-referrer")
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			h.Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		name := "index.html"
		if r.URL.Path != "/" {
			name = path.Clean(r.URL.Path[len("/assets/"):])
		}
		if name == "index.html" {
			h.Set("Cache-Control", "no-store")
			http.ServeContent(w, r, name, started, bytes.NewReader(index))
			return
		}
		b, err := fs.ReadFile(files, name)
		if err != nil {
			http.NotFound(w, r)
			return
		}
		// Revalidated on every load (a 304 while the process runs): a new
		// release's page never runs the previous release's script.
		h.Set("Cache-Control", "no-cache")
		http.ServeContent(w, r, name, started, bytes.NewReader(b))
	})
}
