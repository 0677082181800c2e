package testimage

import (
	"crypto/subtle"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// Registry is an OCI registry served over plain HTTP on 127.0.0.1.
type Registry struct {
	// Host is "127.0.0.1:PORT", the registry part of its references.
	Host string
	// URL is "http://127.0.0.1:PORT".
	URL string

	srv        *httptest.Server
	user, pass string
}

type registryConfig struct {
	user, pass string
	logger     *log.Logger
}

// RegistryOption configures StartRegistry.
type RegistryOption func(*registryConfig)

// WithBasicAuth makes the registry answer 401 with a Basic challenge to any
// request without these credentials.
func WithBasicAuth(user, pass string) RegistryOption {
	return func(c *registryConfig) { c.user, c.pass = user, pass }
}

// WithRequestLog logs every request of the registry to the test log.
func WithRequestLog(t testing.TB) RegistryOption {
	return func(c *registryConfig) { c.logger = log.New(testWriter{t}, "registry: ", 0) }
}

// StartRegistry serves an empty in-memory registry on 127.0.0.1 until the
// test ends.
func StartRegistry(t testing.TB, opts ...RegistryOption) *Registry {
	t.Helper()
	cfg := registryConfig{logger: log.New(io.Discard, "", 0)}
	for _, o := range opts {
		o(&cfg)
	}
	h := registry.New(registry.Logger(cfg.logger))
	if cfg.user != "" {
		h = basicAuth(h, cfg.user, cfg.pass)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return &Registry{
		Host: strings.TrimPrefix(srv.URL, "http://"),
		URL:  srv.URL,
		srv:  srv,
		user: cfg.user,
		pass: cfg.pass,
	}
}

// Ref is the reference of repoTag ("repo:tag") in this registry.
func (r *Registry) Ref(repoTag string) string { return r.Host + "/" + strings.TrimPrefix(repoTag, "/") }

// Push uploads img as repoTag ("repo:tag" or "repo") and returns its
// reference, "127.0.0.1:PORT/repo:tag".
func (r *Registry) Push(t testing.TB, repoTag string, img v1.Image) string {
	t.Helper()
	ref := r.Ref(repoTag)
	if err := r.push(ref, img); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
	return ref
}

// PushIndex uploads idx (an image index and the images it lists) as
// repoTag and returns its reference.
func (r *Registry) PushIndex(t testing.TB, repoTag string, idx v1.ImageIndex) string {
	t.Helper()
	ref := r.Ref(repoTag)
	tag, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatalf("parse %q: %v", ref, err)
	}
	if err := remote.WriteIndex(tag, idx, remote.WithAuth(r.auth())); err != nil {
		t.Fatalf("push index %s: %v", ref, err)
	}
	return ref
}

func (r *Registry) auth() authn.Authenticator {
	if r.user != "" {
		return &authn.Basic{Username: r.user, Password: r.pass}
	}
	return authn.Anonymous
}

func (r *Registry) push(ref string, img v1.Image) error {
	tag, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		return fmt.Errorf("parse %q: %w", ref, err)
	}
	return remote.Write(tag, img, remote.WithAuth(r.auth()))
}

// DigestRef is the by-digest reference of img in the repository of ref:
// "127.0.0.1:PORT/repo@sha256:...".
func DigestRef(t testing.TB, ref string, img v1.Image) string {
	t.Helper()
	d, err := img.Digest()
	if err != nil {
		t.Fatalf("image digest: %v", err)
	}
	parsed, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatalf("parse %q: %v", ref, err)
	}
	return parsed.Context().Name() + "@" + d.String()
}

// ImageID is the id a CRI runtime gives img: the digest of its config.
func ImageID(t testing.TB, img v1.Image) string {
	t.Helper()
	d, err := img.ConfigName()
	if err != nil {
		t.Fatalf("image config digest: %v", err)
	}
	return d.String()
}

// HostsTOML is a containerd hosts.toml that sends the pulls and resolves of
// a registry to endpoint ("127.0.0.1:PORT") over plain HTTP.
func HostsTOML(endpoint string) string {
	return fmt.Sprintf(`server = "http://%[1]s"

[host."http://%[1]s"]
  capabilities = ["pull", "resolve"]
  skip_verify = true
`, endpoint)
}

// WriteHostsFile writes <dir>/<registry>/hosts.toml sending registry's
// pulls to endpoint over plain HTTP: a loopback mirror for "docker.io", or
// the registry itself when endpoint is registry.
func WriteHostsFile(t testing.TB, dir, registry, endpoint string) {
	t.Helper()
	d := filepath.Join(dir, registry)
	if err := os.MkdirAll(d, 0o755); err != nil {
		t.Fatalf("hosts dir: %v", err)
	}
	if err := os.WriteFile(filepath.Join(d, "hosts.toml"), []byte(HostsTOML(endpoint)), 0o644); err != nil {
		t.Fatalf("hosts.toml: %v", err)
	}
}

// WriteHostsDir writes <dir>/<host>/hosts.toml marking each host as a plain
// HTTP registry and returns dir.
func WriteHostsDir(t testing.TB, dir string, hosts ...string) string {
	t.Helper()
	for _, h := range hosts {
		WriteHostsFile(t, dir, h, h)
	}
	return dir
}

// HostsDir writes a hosts.toml directory for this registry in a temporary
// directory and returns it.
func (r *Registry) HostsDir(t testing.TB) string {
	t.Helper()
	return WriteHostsDir(t, t.TempDir(), r.Host)
}

func basicAuth(next http.Handler, user, pass string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		u, p, ok := req.BasicAuth()
		if !ok || subtle.ConstantTimeCompare([]byte(u), []byte(user)) != 1 ||
			subtle.ConstantTimeCompare([]byte(p), []byte(pass)) != 1 {
			w.Header().Set("WWW-Authenticate", `Basic realm="testimage"`)
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = io.WriteString(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`)
			return
		}
		next.ServeHTTP(w, req)
	})
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// Logger is a slog.Logger writing to the test log (shown with -v or on
// failure).
func Logger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(LogWriter(t), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// LogWriter writes each line it is given to the test log.
func LogWriter(t testing.TB) io.Writer { return testWriter{t} }
