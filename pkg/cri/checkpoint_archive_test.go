package cri

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/errdefs"
)

type tarEntry struct {
	name, body, link string
	typ              byte
}

func tarOf(t *testing.T, entries ...tarEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: 0o644, Linkname: e.link}
		if e.typ == tar.TypeReg {
			h.Size = int64(len(e.body))
		}
		if e.typ == tar.TypeDir {
			h.Mode = 0o755
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(e.body)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestCheckpointLocation(t *testing.T) {
	dir := t.TempDir()
	if err := os.Symlink(dir, filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "taken"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		loc  string
		want error
	}{
		{"", errdefs.ErrInvalidArgument},
		{"rel.tar", errdefs.ErrInvalidArgument},
		{dir + "/../x.tar", errdefs.ErrInvalidArgument},
		{dir + "/link/x.tar", errdefs.ErrInvalidArgument},
		{dir + "/missing/x.tar", errdefs.ErrInvalidArgument},
		{dir + "/taken", errdefs.ErrAlreadyExists},
		{dir + "/link", errdefs.ErrAlreadyExists},
		{dir + "/new.tar", nil},
	} {
		_, err := checkpointLocation(tc.loc)
		if (tc.want == nil && err != nil) || (tc.want != nil && !errors.Is(err, tc.want)) {
			t.Errorf("%q: %v, want %v", tc.loc, err, tc.want)
		}
	}
}

func TestWriteArchive(t *testing.T) {
	src := t.TempDir()
	if err := os.MkdirAll(filepath.Join(src, "checkpoint"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "checkpoint", "inventory.img"), []byte("inv"), 0o600); err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	loc := filepath.Join(out, "a.tar")
	if _, err := writeArchive(t.Context(), src, loc); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(loc)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dst := t.TempDir()
	if err := extractCheckpoint(t.Context(), f, dst); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(dst, "checkpoint", "inventory.img")); err != nil || string(b) != "inv" {
		t.Fatalf("round trip: %q %v", b, err)
	}
	// Never over an existing entry; a cancelled write leaves nothing.
	if _, err := writeArchive(t.Context(), src, loc); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Errorf("second write: %v, want AlreadyExists", err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := writeArchive(ctx, src, filepath.Join(out, "b.tar")); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled write: %v", err)
	}
	if ents, _ := os.ReadDir(out); len(ents) != 1 {
		t.Errorf("left in the location's dir: %v", ents)
	}
}

func TestExtractCheckpointRefusesHostileEntries(t *testing.T) {
	for name, data := range map[string][]byte{
		"traversal": tarOf(t, tarEntry{name: "../escaped", typ: tar.TypeReg, body: "x"}),
		"absolute":  tarOf(t, tarEntry{name: "/etc/escaped", typ: tar.TypeReg, body: "x"}),
		"symlink":   tarOf(t, tarEntry{name: "checkpoint", typ: tar.TypeSymlink, link: "/etc"}),
		"hardlink":  tarOf(t, tarEntry{name: "x", typ: tar.TypeLink, link: "/etc/passwd"}),
		"device":    tarOf(t, tarEntry{name: "x", typ: tar.TypeChar}),
		"duplicate": tarOf(t, tarEntry{name: "x", typ: tar.TypeReg}, tarEntry{name: "x", typ: tar.TypeReg}),
		"garbage":   []byte("this is not a tar archive, only some bytes"),
	} {
		parent := t.TempDir()
		dst := filepath.Join(parent, "d")
		if err := os.Mkdir(dst, 0o700); err != nil {
			t.Fatal(err)
		}
		err := extractCheckpoint(t.Context(), bytes.NewReader(data), dst)
		if !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("%s: %v, want InvalidArgument", name, err)
		}
		if ents, _ := os.ReadDir(parent); len(ents) != 1 {
			t.Errorf("%s: wrote beside the extraction dir: %v", name, ents)
		}
	}
}

func TestApplyRootfsDiff(t *testing.T) {
	outside := t.TempDir()
	rootfs := t.TempDir()
	if err := os.WriteFile(filepath.Join(rootfs, "gone"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	ckpt := t.TempDir()
	diff := tarOf(t,
		tarEntry{name: "tmp/", typ: tar.TypeDir},
		tarEntry{name: "tmp/count", typ: tar.TypeReg, body: "42"},
		tarEntry{name: "tmp/link", typ: tar.TypeSymlink, link: "count"},
	)
	if err := os.WriteFile(filepath.Join(ckpt, "rootfs-diff.tar"), diff, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(ckpt, "deleted.files"), []byte(`["/gone"]`), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := applyRootfsDiff(t.Context(), rootfs, ckpt); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(rootfs, "tmp", "link")); string(b) != "42" {
		t.Errorf("tmp/link reads %q", b)
	}
	if _, err := os.Lstat(filepath.Join(rootfs, "gone")); err == nil {
		t.Error("deleted file still there")
	}

	// A symlink out of the rootfs is never followed by a later entry.
	escape := tarOf(t,
		tarEntry{name: "out", typ: tar.TypeSymlink, link: outside},
		tarEntry{name: "out/pwned", typ: tar.TypeReg, body: "x"},
	)
	if err := os.WriteFile(filepath.Join(ckpt, "rootfs-diff.tar"), escape, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(ckpt, "deleted.files"), []byte(`[]`), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := applyRootfsDiff(t.Context(), rootfs, ckpt); err == nil {
		t.Error("a write through a symlink out of the rootfs succeeded")
	}
	if _, err := os.Lstat(filepath.Join(outside, "pwned")); err == nil {
		t.Error("the diff wrote outside the rootfs")
	}
	if err := os.WriteFile(filepath.Join(ckpt, "deleted.files"), []byte(`["/../../etc/passwd"]`), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(ckpt, "rootfs-diff.tar")); err != nil {
		t.Fatal(err)
	}
	// Cleaned as an absolute path, it stays inside (and is absent there).
	if err := applyRootfsDiff(t.Context(), rootfs, ckpt); err != nil {
		t.Errorf("deleted.files with dot-dots: %v", err)
	}
}
