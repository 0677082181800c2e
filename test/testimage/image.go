// Package testimage builds small OCI images in-process and serves them from
// a registry on 127.0.0.1, for tests that pull images without a network.
//
// The images are made of Debian's static busybox (package busybox-static,
// /bin/busybox) with links for the common applets, an /etc/passwd with root
// and app (1000:1000), and an /etc/group.
package testimage

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// BusyboxPath is where Debian's busybox-static installs the binary.
const BusyboxPath = "/bin/busybox"

// Applets are linked to busybox in the image's /bin.
var Applets = []string{
	"sh", "ls", "cat", "echo", "sleep", "id", "env", "pwd", "ip", "wget", "nc",
	"hostname", "uname", "touch", "mkdir", "head", "dd", "seq", "true", "false",
	// critest's default container command (BenchmarkCritest).
	"top",
}

// DefaultEnv is the Env of an image whose Options leave it empty.
var DefaultEnv = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}

// Passwd and Group are the image's /etc/passwd and /etc/group.
const (
	Passwd = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
	Group  = "root:x:0:\napp:x:1000:\nnogroup:x:65534:\n"
)

// Options shape an image's config and content.
type Options struct {
	Entrypoint []string
	// Cmd defaults to ["sh"] when Entrypoint and Cmd are both empty.
	Cmd        []string
	Env        []string
	WorkingDir string
	User       string
	Labels     map[string]string
	// ExposedPorts are "port/proto" ("8080/tcp").
	ExposedPorts []string
	Volumes      []string
	StopSignal   string
	// Files are put in a second layer, path (absolute) → content, mode 0644.
	Files map[string]string
}

// epoch is the creation time of every entry, so that the same options make
// the same image digest.
var epoch = time.Unix(0, 0).UTC()

var (
	baseOnce  sync.Once
	baseLayer v1.Layer
	baseErr   error
)

// BaseLayer is the busybox layer every image starts with, built once.
func BaseLayer() (v1.Layer, error) {
	baseOnce.Do(func() {
		baseLayer, baseErr = buildBaseLayer()
	})
	return baseLayer, baseErr
}

func buildBaseLayer() (v1.Layer, error) {
	bb, err := os.ReadFile(BusyboxPath)
	if err != nil {
		return nil, fmt.Errorf("read busybox (apt-get install busybox-static): %w", err)
	}
	var b tarBuilder
	for _, d := range []string{"bin", "etc", "home", "home/app", "root", "tmp", "usr", "usr/bin", "var"} {
		mode := int64(0o755)
		if d == "tmp" {
			mode = 0o1777
		}
		b.dir(d, mode)
	}
	b.file("bin/busybox", bb, 0o755)
	for _, a := range Applets {
		b.symlink("bin/"+a, "busybox")
	}
	b.file("etc/passwd", []byte(Passwd), 0o644)
	b.file("etc/group", []byte(Group), 0o644)
	b.file("etc/hostname", []byte("testimage\n"), 0o644)
	return b.layer()
}

// Busybox builds an image from the busybox layer, the Files of opts in a
// second layer, and a config from opts.
func Busybox(opts Options) (v1.Image, error) {
	base, err := BaseLayer()
	if err != nil {
		return nil, err
	}
	layers := []v1.Layer{base}
	if len(opts.Files) > 0 {
		var b tarBuilder
		paths := make([]string, 0, len(opts.Files))
		for p := range opts.Files {
			paths = append(paths, p)
		}
		sort.Strings(paths)
		for _, p := range paths {
			b.file(strings.TrimPrefix(p, "/"), []byte(opts.Files[p]), 0o644)
		}
		l, err := b.layer()
		if err != nil {
			return nil, err
		}
		layers = append(layers, l)
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.AppendLayers(img, layers...)
	if err != nil {
		return nil, fmt.Errorf("append layers: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("config file: %w", err)
	}
	cf = cf.DeepCopy()
	cf.OS = "linux"
	cf.Architecture = runtime.GOARCH
	cf.Created = v1.Time{Time: epoch}
	cf.Config = configFrom(opts)
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, fmt.Errorf("set config: %w", err)
	}
	return img, nil
}

// MustBusybox is Busybox that fails the test on error.
func MustBusybox(t testing.TB, opts Options) v1.Image {
	t.Helper()
	img, err := Busybox(opts)
	if err != nil {
		t.Fatalf("build busybox image: %v", err)
	}
	return img
}

func configFrom(opts Options) v1.Config {
	c := v1.Config{
		Entrypoint: slices.Clone(opts.Entrypoint),
		Cmd:        slices.Clone(opts.Cmd),
		Env:        slices.Clone(opts.Env),
		WorkingDir: opts.WorkingDir,
		User:       opts.User,
		Labels:     opts.Labels,
		StopSignal: opts.StopSignal,
	}
	if len(c.Entrypoint) == 0 && len(c.Cmd) == 0 {
		c.Cmd = []string{"sh"}
	}
	if len(c.Env) == 0 {
		c.Env = slices.Clone(DefaultEnv)
	}
	if len(opts.ExposedPorts) > 0 {
		c.ExposedPorts = map[string]struct{}{}
		for _, p := range opts.ExposedPorts {
			c.ExposedPorts[p] = struct{}{}
		}
	}
	if len(opts.Volumes) > 0 {
		c.Volumes = map[string]struct{}{}
		for _, v := range opts.Volumes {
			c.Volumes[v] = struct{}{}
		}
	}
	return c
}

// tarBuilder writes a layer tar in memory with fixed owners and times.
type tarBuilder struct {
	buf bytes.Buffer
	tw  *tar.Writer
	err error
}

func (b *tarBuilder) write(h *tar.Header, body []byte) {
	if b.tw == nil {
		b.tw = tar.NewWriter(&b.buf)
	}
	if b.err != nil {
		return
	}
	h.ModTime, h.Uid, h.Gid, h.Format = epoch, 0, 0, tar.FormatPAX
	if b.err = b.tw.WriteHeader(h); b.err == nil && len(body) > 0 {
		_, b.err = b.tw.Write(body)
	}
}

func (b *tarBuilder) dir(name string, mode int64) {
	b.write(&tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: mode}, nil)
}

func (b *tarBuilder) file(name string, body []byte, mode int64) {
	b.write(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(body))}, body)
}

func (b *tarBuilder) symlink(name, target string) {
	b.write(&tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: target, Mode: 0o777}, nil)
}

func (b *tarBuilder) layer() (v1.Layer, error) {
	if b.tw == nil {
		b.tw = tar.NewWriter(&b.buf)
	}
	if b.err != nil {
		return nil, fmt.Errorf("write layer tar: %w", b.err)
	}
	if err := b.tw.Close(); err != nil {
		return nil, fmt.Errorf("close layer tar: %w", err)
	}
	data := b.buf.Bytes()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(data)), nil
	}, tarball.WithMediaType(types.OCILayer), tarball.WithCompressedCaching)
	if err != nil {
		return nil, fmt.Errorf("make layer: %w", err)
	}
	return l, nil
}
