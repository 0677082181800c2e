package critest_test

import (
	"archive/tar"
	"bytes"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/aurae-runtime/aurae-cri/test/testimage"
)

// imageRef matches an image reference with a registry host: host/path[:tag]
// or host/path@sha256:digest.
var imageRef = regexp.MustCompile(`^[a-z0-9-]+(\.[a-z0-9-]+)+(:[0-9]+)?/[a-z0-9._/-]*[a-z0-9](:[A-Za-z0-9._-]+|@sha256:[0-9a-f]{64})?$`)

// critestImages reads the image references critest pulls from its own
// source (pkg/validate and pkg/framework of the cri-tools module in the
// module cache): string constants, variables and literals, with the
// concatenations of them the source makes (registry + "name",
// runtime.GOARCH included). Windows images are left out. Nothing of the
// upstream registries is written in our code: they come from here.
func critestImages(t *testing.T, moduleDir string) []string {
	t.Helper()
	fset := token.NewFileSet()
	env := map[string]ast.Expr{} // "pkg.Name" → expression
	var files []*ast.File
	var pkgs []string
	for _, pkg := range []string{"validate", "framework"} {
		paths, err := filepath.Glob(filepath.Join(moduleDir, "pkg", pkg, "*.go"))
		if err != nil || len(paths) == 0 {
			t.Fatalf("critest source %s/pkg/%s: %v (no Go files)", moduleDir, pkg, err)
		}
		for _, p := range paths {
			if strings.HasSuffix(p, "_test.go") || strings.HasSuffix(p, "_windows.go") {
				continue
			}
			f, err := parser.ParseFile(fset, p, nil, 0)
			if err != nil {
				t.Fatalf("parse %s: %v", p, err)
			}
			files, pkgs = append(files, f), append(pkgs, pkg)
			for _, d := range f.Decls {
				g, ok := d.(*ast.GenDecl)
				if !ok {
					continue
				}
				for _, s := range g.Specs {
					vs, ok := s.(*ast.ValueSpec)
					if !ok {
						continue
					}
					for i, n := range vs.Names {
						if i < len(vs.Values) {
							env[pkg+"."+n.Name] = vs.Values[i]
						}
					}
				}
			}
		}
	}
	var eval func(pkg string, e ast.Expr, depth int) (string, bool)
	eval = func(pkg string, e ast.Expr, depth int) (string, bool) {
		if depth > 20 {
			return "", false
		}
		switch e := e.(type) {
		case *ast.BasicLit:
			if e.Kind != token.STRING {
				return "", false
			}
			s, err := strconv.Unquote(e.Value)
			return s, err == nil
		case *ast.ParenExpr:
			return eval(pkg, e.X, depth+1)
		case *ast.BinaryExpr:
			if e.Op != token.ADD {
				return "", false
			}
			x, ok1 := eval(pkg, e.X, depth+1)
			y, ok2 := eval(pkg, e.Y, depth+1)
			return x + y, ok1 && ok2
		case *ast.Ident:
			v, ok := env[pkg+"."+e.Name]
			if !ok {
				return "", false
			}
			return eval(pkg, v, depth+1)
		case *ast.SelectorExpr:
			x, ok := e.X.(*ast.Ident)
			if !ok {
				return "", false
			}
			if x.Name == "runtime" && e.Sel.Name == "GOARCH" {
				return runtime.GOARCH, true
			}
			v, ok := env[x.Name+"."+e.Sel.Name]
			if !ok {
				return "", false
			}
			return eval(x.Name, v, depth+1)
		}
		return "", false
	}
	windows := func(names ...string) bool {
		for _, n := range names {
			if strings.Contains(n, "Windows") {
				return true
			}
		}
		return false
	}
	seen := map[string]bool{}
	for i, f := range files {
		pkg := pkgs[i]
		ast.Inspect(f, func(n ast.Node) bool {
			switch n := n.(type) {
			case *ast.ValueSpec:
				var names []string
				for _, id := range n.Names {
					names = append(names, id.Name)
				}
				return !windows(names...)
			case *ast.AssignStmt:
				for _, l := range n.Lhs {
					if id, ok := l.(*ast.Ident); ok && windows(id.Name) {
						return false
					}
				}
			case *ast.ImportSpec:
				return false
			case *ast.Ident:
				if windows(n.Name) {
					return false
				}
				if s, ok := eval(pkg, n, 0); ok && imageRef.MatchString(s) {
					seen[s] = true
				}
			case *ast.BasicLit, *ast.BinaryExpr, *ast.SelectorExpr:
				if s, ok := eval(pkg, n.(ast.Expr), 0); ok {
					if imageRef.MatchString(s) {
						seen[s] = true
					}
					return false
				}
			}
			return true
		})
	}
	refs := make([]string, 0, len(seen))
	for r := range seen {
		refs = append(refs, r)
	}
	sort.Strings(refs)
	return refs
}

// splitRef splits host/path:tag into its host and path:tag.
func splitRef(ref string) (host, repoTag string) {
	host, repoTag, _ = strings.Cut(ref, "/")
	return host, repoTag
}

// imageFor builds the stand-in of a critest image, after the Dockerfiles
// under cri-tools' images/ and what the specs check: busybox with every
// applet, web servers on the port their spec dials (busybox httpd), users
// and groups in the config and /etc files. The choice goes by the last path
// element of the repository, without host or tag.
func imageFor(t *testing.T, repoTag string) v1.Image {
	t.Helper()
	repo := repoTag
	if i := strings.LastIndex(repo, ":"); i > strings.LastIndex(repo, "/") {
		repo = repo[:i]
	}
	name := path.Base(repo)
	opts := testimage.Options{}
	httpd := func(server string, port int) {
		// A first line in the log naming the server, as Apache's and
		// nginx's start-up lines do (multi-container specs look for it);
		// nginx's pid file, and a process named nginx (HostPID specs:
		// /usr/sbin/nginx links to busybox, argv[0] picks its httpd).
		// The shell stays PID 1 with "master process" in its command line,
		// as nginx's (ContainerPID spec).
		opts.Entrypoint = []string{"/bin/sh", "-c", fmt.Sprintf(
			"echo %s listening on %d; mkdir -p /var/run; (exec -a httpd /usr/sbin/%[1]s -f -p %[2]d -h /usr/share/nginx/html) & pid=$!; echo $pid >/var/run/nginx.pid; trap 'kill $pid; exit 0' TERM INT; wait",
			server, port), server + ": master process"}
		opts.ExposedPorts = []string{fmt.Sprintf("%d/tcp", port)}
		opts.Files = map[string]string{"/usr/share/nginx/html/index.html": "<title>Welcome to nginx!</title>\n"}
	}
	passwd := testimage.Passwd + "www-data:x:33:33:www-data:/var/www:/bin/false\n"
	group := testimage.Group + "www-data:x:33:\n"
	switch {
	case strings.HasPrefix(name, "hostnet-nginx"):
		httpd("nginx", 12003)
	case name == "nginx" || name == "httpd":
		httpd(name, 80)
	case name == "test-image-user-uid":
		opts.User = "1002"
	case name == "test-image-user-username":
		opts.User = "www-data"
	case name == "test-image-user-uid-group":
		opts.User = "1003:1003"
	case name == "test-image-user-username-group":
		opts.User = "www-data:www-data"
	case name == "test-image-predefined-group":
		opts.User = "1000"
		passwd = "root:x:0:0:root:/root:/bin/sh\ndefault-user:x:1000:1000:Linux User,,,:/home/default-user:/bin/sh\n"
		group = "root:x:0:\ndefault-user:x:1000:\ngroup-defined-in-image:x:50000:default-user\n"
	case strings.HasPrefix(name, "test-image-tags"):
		// One image under several tags.
		opts.Files = map[string]string{"/test-image-tags": "same\n"}
	case strings.HasPrefix(name, "test-image"):
		// image-test/Dockerfile: ADD ${TEST} ${TEST}, one image per name.
		opts.Files = map[string]string{"/" + name: name + "\n"}
	case name == "pause":
		opts.Cmd = []string{"sleep", "inf"}
	case name == "nonewprivs":
		opts.Entrypoint = []string{"/usr/local/bin/nnp"}
	}
	if opts.Files == nil {
		opts.Files = map[string]string{}
	}
	opts.Files["/etc/passwd"] = passwd
	opts.Files["/etc/group"] = group
	img := testimage.MustBusybox(t, opts)
	layers := []v1.Layer{appletLayer(t)}
	if name == "nonewprivs" {
		layers = append(layers, nnpLayer(t))
	}
	img, err := mutate.AppendLayers(img, layers...)
	if err != nil {
		t.Fatalf("image %s: %v", repoTag, err)
	}
	return img
}

// nnpSource is the program of the nonewprivs image: set-user-ID root, it
// prints the effective uid it runs with (0 unless no_new_privs is set).
const nnpSource = `package main

import (
	"fmt"
	"os"
)

func main() { fmt.Printf("Effective uid: %d\n", os.Geteuid()) }
`

// nnpLayer builds nnpSource (static) into /usr/local/bin/nnp, mode 04755.
func nnpLayer(t *testing.T) v1.Layer {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "main.go"), []byte(nnpSource), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module nnp\n\ngo 1.24\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(goBin(), "build", "-o", "nnp", ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOWORK=off", "GOFLAGS=")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build nonewprivs' program: %v\n%s", err, out)
	}
	bin, err := os.ReadFile(filepath.Join(dir, "nnp"))
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range []*tar.Header{
		{Typeflag: tar.TypeDir, Name: "usr/local/", Mode: 0o755},
		{Typeflag: tar.TypeDir, Name: "usr/local/bin/", Mode: 0o755},
		{Typeflag: tar.TypeReg, Name: "usr/local/bin/nnp", Mode: 0o4755, Size: int64(len(bin))},
	} {
		h.ModTime = time.Unix(0, 0)
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := tw.Write(bin); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	b := buf.Bytes()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// Stand-ins for the procps and util-linux tools critest runs that Debian's
// busybox lacks: ipcs -m (HostIpc specs look for a segment id in its
// output) and pgrep NAME (execSync with timeout).
var tools = map[string]string{
	"usr/bin/ipcs":  "#!/bin/sh\ncat /proc/sysvipc/shm\n",
	"usr/bin/pgrep": "#!/bin/sh\nfor d in /proc/[0-9]*; do [ \"$(cat \"$d/comm\" 2>/dev/null)\" = \"$1\" ] && echo \"${d#/proc/}\"; done; exit 0\n",
}

// appletLayer puts busybox in /bin with every applet (critest runs top,
// tail, grep, ps, mount, stat, … in its busybox image) as a hard link, as
// the busybox image does: masking one (MaskedPaths of /bin/ls) must not mask
// the shell. It adds /usr/sbin/nginx and /usr/sbin/httpd (links whose name
// the web servers' processes take) and the tools above.
func appletLayer(t *testing.T) v1.Layer {
	t.Helper()
	bb, err := os.ReadFile(testimage.BusyboxPath)
	if err != nil {
		t.Fatalf("busybox: %v", err)
	}
	out, err := exec.Command(testimage.BusyboxPath, "--list").Output()
	if err != nil {
		t.Fatalf("%s --list: %v", testimage.BusyboxPath, err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	epoch := time.Unix(0, 0)
	write := func(h *tar.Header, body []byte) {
		h.ModTime = epoch
		h.Size = int64(len(body))
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(body); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []string{"bin/", "usr/", "usr/bin/", "usr/sbin/"} {
		write(&tar.Header{Typeflag: tar.TypeDir, Name: d, Mode: 0o755}, nil)
	}
	write(&tar.Header{Typeflag: tar.TypeReg, Name: "bin/busybox", Mode: 0o755}, bb)
	seen := map[string]bool{"busybox": true}
	for _, a := range strings.Fields(string(out)) {
		if seen[a] || strings.Contains(a, "/") {
			continue
		}
		seen[a] = true
		write(&tar.Header{Typeflag: tar.TypeLink, Name: "bin/" + a, Linkname: "bin/busybox", Mode: 0o755}, nil)
	}
	for _, n := range []string{"usr/sbin/nginx", "usr/sbin/httpd"} {
		write(&tar.Header{Typeflag: tar.TypeLink, Name: n, Linkname: "bin/busybox", Mode: 0o755}, nil)
	}
	names := make([]string, 0, len(tools))
	for n := range tools {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		write(&tar.Header{Typeflag: tar.TypeReg, Name: n, Mode: 0o755}, []byte(tools[n]))
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	b := buf.Bytes()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// writeHosts makes dir a --registry-config-dir that sends every registry
// of refs, and the local one, to the local registry over plain HTTP.
func writeHosts(t *testing.T, dir, local string, refs []string) {
	t.Helper()
	testimage.WriteHostsFile(t, dir, local, local)
	for _, r := range refs {
		host, _ := splitRef(r)
		if _, err := os.Stat(filepath.Join(dir, host)); err == nil {
			continue
		}
		testimage.WriteHostsFile(t, dir, host, local)
	}
}
