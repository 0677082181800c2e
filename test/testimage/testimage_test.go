package testimage

import (
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

func requireBusybox(t *testing.T) {
	t.Helper()
	if _, err := os.Stat(BusyboxPath); err != nil {
		t.Skipf("no %s (apt-get install busybox-static)", BusyboxPath)
	}
}

func TestBusyboxImage(t *testing.T) {
	requireBusybox(t)
	img := MustBusybox(t, Options{User: "app", WorkingDir: "/home/app", ExposedPorts: []string{"80/tcp"}, Files: map[string]string{"/etc/motd": "hi"}})
	mt, err := img.MediaType()
	if err != nil || mt != types.OCIManifestSchema1 {
		t.Errorf("media type %q, %v", mt, err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.OS != "linux" || cf.Config.User != "app" || cf.Config.WorkingDir != "/home/app" ||
		!slices.Equal(cf.Config.Cmd, []string{"sh"}) || !slices.Equal(cf.Config.Env, DefaultEnv) {
		t.Errorf("config %+v", cf.Config)
	}
	if _, ok := cf.Config.ExposedPorts["80/tcp"]; !ok {
		t.Errorf("ports %v", cf.Config.ExposedPorts)
	}
	layers, err := img.Layers()
	if err != nil || len(layers) != 2 {
		t.Fatalf("layers %d, %v", len(layers), err)
	}

	// The flattened filesystem has busybox, the applets and the users.
	files := map[string]string{}
	rc := mutate.Extract(img)
	defer rc.Close()
	tr := newTarReader(rc)
	for tr.Next() {
		files[tr.Name()] = tr.Link()
	}
	if tr.Err() != nil {
		t.Fatal(tr.Err())
	}
	for _, want := range []string{"bin/busybox", "etc/passwd", "etc/group", "etc/motd"} {
		if _, ok := files[want]; !ok {
			t.Errorf("image lacks %s", want)
		}
	}
	for _, a := range Applets {
		if files["bin/"+a] != "busybox" {
			t.Errorf("bin/%s -> %q", a, files["bin/"+a])
		}
	}
	if !strings.Contains(Passwd, "app:x:1000:1000:") {
		t.Error("passwd lacks app")
	}

	// Same options, same image.
	again := MustBusybox(t, Options{User: "app", WorkingDir: "/home/app", ExposedPorts: []string{"80/tcp"}, Files: map[string]string{"/etc/motd": "hi"}})
	d1, _ := img.Digest()
	d2, _ := again.Digest()
	if d1 != d2 {
		t.Errorf("image digests differ: %s %s", d1, d2)
	}
}

func TestRegistryPushAndAuth(t *testing.T) {
	requireBusybox(t)
	img := MustBusybox(t, Options{})
	reg := StartRegistry(t, WithBasicAuth("u", "p"))
	ref := reg.Push(t, "a/b:1", img)
	if !strings.HasPrefix(ref, "127.0.0.1:") || !strings.HasSuffix(ref, "/a/b:1") {
		t.Fatalf("ref %q", ref)
	}
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	got, err := remote.Image(r, remote.WithAuth(&authn.Basic{Username: "u", Password: "p"}))
	if err != nil {
		t.Fatalf("fetch with credentials: %v", err)
	}
	gd, _ := got.Digest()
	if want := DigestRef(t, ref, img); want != r.Context().Name()+"@"+gd.String() {
		t.Errorf("digest ref %s, pulled %s", want, gd)
	}
	if ImageID(t, img) != ImageID(t, got) {
		t.Error("image id changed through the registry")
	}
	_, err = remote.Image(r)
	var terr *transport.Error
	if !errors.As(err, &terr) || terr.StatusCode != http.StatusUnauthorized {
		t.Errorf("anonymous fetch: %v, want 401", err)
	}
}

func TestWriteHostsDir(t *testing.T) {
	dir := WriteHostsDir(t, t.TempDir(), "127.0.0.1:5000")
	b, err := os.ReadFile(filepath.Join(dir, "127.0.0.1:5000", "hosts.toml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`server = "http://127.0.0.1:5000"`, `[host."http://127.0.0.1:5000"]`, `capabilities = ["pull", "resolve"]`, `skip_verify = true`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("hosts.toml lacks %s:\n%s", want, b)
		}
	}
}
