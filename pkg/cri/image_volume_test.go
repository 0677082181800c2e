package cri

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"google.golang.org/grpc/codes"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/pkg/image"
)

var volumeImageID = "sha256:" + strings.Repeat("b", 64) // newCrashFixture's image

// withImageVolume is appContainer with the fixture's image mounted at
// /iv (below sub, if not "").
func withImageVolume(name, sub string) *runtimeapi.ContainerConfig {
	c := appContainer(name)
	c.Mounts = []*runtimeapi.Mount{{ContainerPath: "/iv", Readonly: true, ImageSubPath: sub,
		Image: &runtimeapi.ImageSpec{Image: "example.com/app:1"}}}
	return c
}

// volumeFixture is a crashFixture whose image's content is a dir with
// etc/passwd and a symlink that points out of it.
func volumeFixture(t *testing.T) *crashFixture {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting image volumes needs root")
	}
	f := newCrashFixture(t)
	src := f.images.RootfsSource
	if err := os.MkdirAll(filepath.Join(src, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "etc", "passwd"), []byte("root:x:0:0::/:/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../../../../../..", filepath.Join(src, "up")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/etc", filepath.Join(src, "abs")); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *crashFixture) volumeDir() string {
	return f.rt.imageVolumeDir(image.ImageVolumeKey(volumeImageID))
}

func (f *crashFixture) volumeHeld(t *testing.T) bool {
	t.Helper()
	keys, err := f.images.ImageVolumes(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return slices.Contains(keys, image.ImageVolumeKey(volumeImageID))
}

func TestImageVolumeSharedAndReleasedWithLastUser(t *testing.T) {
	f := volumeFixture(t)
	podID := f.pod(t, f.rt, "p")
	a, err := f.rt.CreateContainer(t.Context(), &runtimeapi.CreateContainerRequest{PodSandboxId: podID, Config: withImageVolume("a", "")})
	if err != nil {
		t.Fatal(err)
	}
	b, err := f.rt.CreateContainer(t.Context(), &runtimeapi.CreateContainerRequest{PodSandboxId: podID, Config: withImageVolume("b", "etc")})
	if err != nil {
		t.Fatal(err)
	}
	dir := f.volumeDir()
	t.Cleanup(func() { _ = unmountImageVolume(dir) })
	if !mounted(t, dir) || !f.volumeHeld(t) {
		t.Fatal("the image volume is not mounted or not held")
	}
	// Read-only on the host already.
	if err := os.WriteFile(filepath.Join(dir, "x"), nil, 0o644); err == nil {
		t.Error("wrote into the image volume")
	}
	cb, err := f.store.Container(b.GetContainerId())
	if err != nil {
		t.Fatal(err)
	}
	if len(cb.ImageVolumes) != 1 || cb.ImageVolumes[0].Source != filepath.Join(dir, "etc") {
		t.Fatalf("b's image volumes %+v, want its source %s", cb.ImageVolumes, filepath.Join(dir, "etc"))
	}
	if !strings.Contains(string(cb.Spec), `"source":"`+filepath.Join(dir, "etc")+`"`) {
		t.Errorf("b's spec does not mount %s/etc: %s", dir, cb.Spec)
	}
	st, err := f.rt.ContainerStatus(t.Context(), &runtimeapi.ContainerStatusRequest{ContainerId: a.GetContainerId()})
	if err != nil {
		t.Fatal(err)
	}
	if ms := st.GetStatus().GetMounts(); len(ms) != 1 || ms[0].GetImage().GetImageRef() != volumeImageID || ms[0].GetImage().GetImage() != "example.com/app:1" {
		t.Errorf("status mounts %v, want image_ref %s", ms, volumeImageID)
	}

	// A restart keeps a volume in use.
	f.rt = f.restart(t, nil)
	if !mounted(t, dir) || !f.volumeHeld(t) {
		t.Fatal("a restart released a volume in use")
	}
	if _, err := f.rt.RemoveContainer(t.Context(), &runtimeapi.RemoveContainerRequest{ContainerId: a.GetContainerId()}); err != nil {
		t.Fatal(err)
	}
	if !mounted(t, dir) || !f.volumeHeld(t) {
		t.Fatal("removing one of two users released the volume")
	}
	if _, err := f.rt.RemoveContainer(t.Context(), &runtimeapi.RemoveContainerRequest{ContainerId: b.GetContainerId()}); err != nil {
		t.Fatal(err)
	}
	if mounted(t, dir) || f.volumeHeld(t) {
		t.Fatal("removing the last user left the volume")
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("the volume's dir is left: %v", err)
	}
}

func TestImageVolumeRefused(t *testing.T) {
	f := volumeFixture(t)
	podID := f.pod(t, f.rt, "p")
	tests := []struct {
		name, sub string
		mutate    func(*runtimeapi.Mount)
		want      string // in the message
	}{
		{name: "missing sub path", sub: "nope/x", want: `image_sub_path "nope/x" does not exist`},
		{name: "sub path climbing out", sub: "etc/../../x", want: `image_sub_path "etc/../../x" escapes`},
		{name: "absolute sub path", sub: "/etc", want: `image_sub_path "/etc" escapes`},
		{name: "sub path through a symlink to a missing file", sub: "up/nope", want: `image_sub_path "up/nope" does not exist`},
		{name: "writable", mutate: func(m *runtimeapi.Mount) { m.Readonly = false }, want: "must be read-only"},
		{name: "with a host path", mutate: func(m *runtimeapi.Mount) { m.HostPath = "/tmp" }, want: "are exclusive"},
		{name: "absent image named by id", mutate: func(m *runtimeapi.Mount) { m.Image.Image = "sha256:" + strings.Repeat("c", 64) }, want: "not found"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := withImageVolume("c", tc.sub)
			if tc.mutate != nil {
				tc.mutate(cfg.Mounts[0])
			}
			_, err := f.rt.CreateContainer(t.Context(), &runtimeapi.CreateContainerRequest{PodSandboxId: podID, Config: cfg})
			want := codes.InvalidArgument
			if strings.Contains(tc.want, "not found") {
				want = codes.NotFound
			}
			if code(err) != want || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %v (%s), want %s with %q", err, code(err), want, tc.want)
			}
			if mounted(t, f.volumeDir()) || f.volumeHeld(t) || len(f.store.Intents()) != 0 {
				t.Errorf("a refused creation left its volume (mounted %v, held %v) or intent %+v", mounted(t, f.volumeDir()), f.volumeHeld(t), f.store.Intents())
			}
		})
	}
}

func TestResolveSubPathStaysInImage(t *testing.T) {
	f := volumeFixture(t)
	root := f.images.RootfsSource
	for sub, want := range map[string]string{"etc": "etc", "abs/passwd": "etc/passwd", "up": "", "up/etc": "etc"} {
		got, err := resolveSubPath(root, sub)
		if err != nil || got != filepath.Join(root, want) {
			t.Errorf("resolveSubPath(%q) = %q, %v; want %q", sub, got, err, filepath.Join(root, want))
		}
	}
	if _, err := resolveSubPath(root, "etc/passwd/x"); !errdefs.IsInvalidArgument(err) {
		t.Errorf("a path below a file: %v, want invalid", err)
	}
}

func TestRecoverReleasesImageVolumeOfCreationCutShort(t *testing.T) {
	f := volumeFixture(t)
	rt, died := f.crashAt(t, FaultContainerImageVolumes)
	podID := f.pod(t, rt, "p")
	go func() {
		_, _ = rt.CreateContainer(t.Context(), &runtimeapi.CreateContainerRequest{PodSandboxId: podID, Config: withImageVolume("c", "etc")})
	}()
	waitDied(t, died, FaultContainerImageVolumes)
	in := f.onlyIntent(t)
	t.Cleanup(func() { _ = unmountRootfs(f.rt.rootfsDir(in.ID)); _ = unmountImageVolume(f.volumeDir()) })
	if !slices.Equal(in.ImageVolumes, []string{image.ImageVolumeKey(volumeImageID)}) {
		t.Fatalf("intent %+v does not name the image volume", in)
	}
	if !mounted(t, f.volumeDir()) || !f.volumeHeld(t) {
		t.Fatal("no image volume: the crash came too early")
	}
	f.rt = f.restart(t, nil)
	if mounted(t, f.volumeDir()) || f.volumeHeld(t) {
		t.Error("recovery left the image volume of a creation cut short")
	}
	if len(f.store.Intents()) != 0 {
		t.Errorf("intents after recovery: %+v", f.store.Intents())
	}
}

func TestRecoverReleasesImageVolumeWithoutUser(t *testing.T) {
	f := volumeFixture(t)
	// A volume made by a run whose records are gone (no container, no
	// intent names it): released at the next start.
	if _, err := f.rt.mountImageVolume(t.Context(), image.ImageVolumeKey(volumeImageID), volumeImageID, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unmountImageVolume(f.volumeDir()) })
	f.rt = f.restart(t, nil)
	if mounted(t, f.volumeDir()) || f.volumeHeld(t) {
		t.Error("recovery kept an image volume nothing uses")
	}
}
