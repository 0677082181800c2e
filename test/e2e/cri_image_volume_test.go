package e2e

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/pkg/cri"
	"github.com/aurae-runtime/aurae-cri/test/testimage"
)

// TestCRIImageVolumes mounts an image (of two layers, removed first: the
// creation pulls it) into two containers of a pod, whole and by sub path,
// read-only (one mount noexec), through a kill -9 of aurae-cri; the
// image's volume (mount, view, lease) outlives the first removal and goes
// with the last; a creation cut short by a crash right after the volume is
// mounted leaves nothing after the restart.
func TestCRIImageVolumes(t *testing.T) {
	c := startCrashCRI(t)
	ctx := t.Context()
	busybox := c.pushBusybox(t, "e2e/busybox:1", testimage.Options{})
	vol := c.pushBusybox(t, "e2e/volume:1", testimage.Options{Files: map[string]string{"/data/hello.txt": "hello from the image\n"}})
	st, err := c.Images.ImageStatus(ctx, &runtimeapi.ImageSpec{Image: vol}, false)
	if err != nil || st.GetImage() == nil {
		t.Fatalf("volume image status: %v %v", st, err)
	}
	volID := st.GetImage().GetId()
	volHex := strings.TrimPrefix(volID, "sha256:")
	if err := c.Images.RemoveImage(ctx, &runtimeapi.ImageSpec{Image: volID}); err != nil {
		t.Fatal(err)
	}

	pod := c.podConfig(t, "imgvol")
	podID, err := c.Runtime.RunPodSandbox(ctx, pod, "")
	if err != nil {
		t.Fatal(err)
	}
	imageMount := func(dst, sub string, opts ...string) *runtimeapi.Mount {
		return &runtimeapi.Mount{ContainerPath: dst, Readonly: true, ImageSubPath: sub, MountOptions: opts,
			Image: &runtimeapi.ImageSpec{Image: vol, UserSpecifiedImage: vol}}
	}
	whole := containerConfig("whole", busybox, "sleep", "300")
	whole.Mounts = []*runtimeapi.Mount{imageMount("/iv", "")}
	a := runContainer(t, c.CRI, podID, pod, whole)
	if got, err := c.Images.ImageStatus(ctx, &runtimeapi.ImageSpec{Image: vol}, false); err != nil || got.GetImage().GetId() != volID {
		t.Fatalf("the image volume's image was not pulled again: %v %v", got, err)
	}
	sub := containerConfig("sub", busybox, "sleep", "300")
	sub.Mounts = []*runtimeapi.Mount{imageMount("/ivd", "data"), imageMount("/ivx", "", "noexec")}
	b := runContainer(t, c.CRI, podID, pod, sub)

	exec := func(id string, argv ...string) (string, error) {
		out, errOut, err := c.Runtime.ExecSync(ctx, id, argv, 30*time.Second)
		return string(out) + string(errOut), err
	}
	mustExec := func(id string, argv ...string) string {
		t.Helper()
		out, err := exec(id, argv...)
		if err != nil {
			t.Fatalf("%v in %s: %v: %s", argv, id[:12], err, out)
		}
		return out
	}
	mustFail := func(why, id string, argv ...string) {
		t.Helper()
		if out, err := exec(id, argv...); err == nil {
			t.Errorf("%s: %v in %s succeeded: %s", why, argv, id[:12], out)
		}
	}
	check := func() {
		t.Helper()
		mustExec(a, "ls", "/iv/bin/sh")
		if out := mustExec(a, "cat", "/iv/data/hello.txt"); out != "hello from the image\n" {
			t.Errorf("the whole image's file: %q", out)
		}
		mustExec(a, "/iv/bin/busybox", "true") // not noexec
		mustFail("read-only", a, "touch", "/iv/x")
		mustFail("read-only", a, "mkdir", "/iv/data/y")
		if out := mustExec(b, "cat", "/ivd/hello.txt"); out != "hello from the image\n" {
			t.Errorf("the sub path's file: %q", out)
		}
		mustFail("the sub path, not the image root", b, "ls", "/ivd/data")
		mustFail("read-only", b, "touch", "/ivd/x")
		mustExec(b, "ls", "/ivx/bin/busybox")
		mustFail("noexec", b, "/ivx/bin/busybox", "true")
		for _, id := range []string{a, b} {
			st, err := c.Runtime.ContainerStatus(ctx, id, false)
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range st.GetStatus().GetMounts() {
				if m.GetImage().GetImageRef() != volID {
					t.Errorf("%s: mount at %s has image_ref %q, want %s", id[:12], m.GetContainerPath(), m.GetImage().GetImageRef(), volID)
				}
			}
		}
	}
	check()

	for _, tc := range []struct{ sub, want string }{
		{"nope", `image_sub_path "nope" does not exist`},
		{"../etc", `image_sub_path "../etc" escapes`},
	} {
		bad := containerConfig("bad", busybox, "sleep", "300")
		bad.Mounts = []*runtimeapi.Mount{imageMount("/iv", tc.sub)}
		_, err := c.Runtime.CreateContainer(ctx, podID, bad, pod)
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("sub path %q: %v, want InvalidArgument with %q", tc.sub, err, tc.want)
		}
	}

	// A client of the containerd child per look: the child dies and
	// restarts with aurae-cri.
	footprint := func() *footprint {
		ctrd := c.containerd(t)
		defer func() { _ = ctrd.Close() }()
		return c.footprint(t, nil, ctrd, nil)
	}
	volume := func() []string { return footprint().of(volHex) }
	held := volume()
	if len(held) < 3 {
		t.Fatalf("the image volume's footprint (mount, view, lease) is %q", held)
	}

	c.Kill9()
	c.Restart(t)
	if got := volume(); len(got) != len(held) {
		t.Fatalf("after a kill -9 and restart the volume is %q, was %q", got, held)
	}
	check()

	if err := c.Runtime.RemoveContainer(ctx, a); err != nil {
		t.Fatal(err)
	}
	if got := volume(); len(got) != len(held) {
		t.Fatalf("removing one of two users changed the volume: %q, was %q", got, held)
	}
	mustExec(b, "cat", "/ivd/hello.txt")
	if err := c.Runtime.RemoveContainer(ctx, b); err != nil {
		t.Fatal(err)
	}
	if left := volume(); len(left) > 0 {
		t.Fatalf("left of the image volume after its last user went:\n  %s", strings.Join(left, "\n  "))
	}

	// A creation cut short right after the volume was mounted.
	c.aim(t, cri.FaultContainerImageVolumes)
	cut := containerConfig("cut", busybox, "sleep", "300")
	cut.Mounts = []*runtimeapi.Mount{imageMount("/iv", "data")}
	if _, err := c.Runtime.CreateContainer(ctx, podID, cut, pod); err == nil {
		t.Fatal("CreateContainer answered: aurae-cri did not die")
	}
	c.aim(t, "")
	_ = c.wait(t)
	// aurae-cri is dead, its containerd child with it: the mount tells.
	if in, mounted := c.intentLeft(t), c.footprint(t, nil, nil, nil).of(volHex); len(in.ImageVolumes) != 1 || len(mounted) == 0 {
		t.Fatalf("the crash left no image volume to undo: intent %+v, volume %q", in, mounted)
	}
	c.Restart(t)
	if left := volume(); len(left) > 0 {
		t.Fatalf("left of the image volume after recovery:\n  %s", strings.Join(left, "\n  "))
	}
	if err := c.Runtime.RemovePodSandbox(ctx, podID); err != nil {
		t.Fatal(err)
	}
	if left := footprint().unowned(nil, 0); len(left) > 0 {
		t.Errorf("left on the machine:\n  %s", strings.Join(left, "\n  "))
	}
}

// TestCRIVMImageVolume mounts an image volume, whole and by sub path, into
// a container of a VM pod: it reaches the guest through the pod's share,
// read-only, and goes with the container.
func TestCRIVMImageVolume(t *testing.T) {
	requireVMImage(t)
	c := startCRI(t)
	ctx := t.Context()
	busybox := c.pushBusybox(t, "e2e/busybox:vm", testimage.Options{})
	vol := c.pushBusybox(t, "e2e/volume:vm", testimage.Options{Files: map[string]string{"/data/hello.txt": "hello from the image\n"}})
	st, err := c.Images.ImageStatus(ctx, &runtimeapi.ImageSpec{Image: vol}, false)
	if err != nil || st.GetImage() == nil {
		t.Fatalf("volume image status: %v %v", st, err)
	}
	volHex := strings.TrimPrefix(st.GetImage().GetId(), "sha256:")
	pod := c.podConfig(t, "vmimgvol")
	podID, err := c.Runtime.RunPodSandbox(ctx, pod, "aurae-vm")
	if err != nil {
		t.Fatalf("run vm pod: %v", err)
	}
	cfg := containerConfig("reader", busybox, "sleep", "300")
	cfg.Mounts = []*runtimeapi.Mount{
		{ContainerPath: "/iv", Readonly: true, Image: &runtimeapi.ImageSpec{Image: vol}},
		{ContainerPath: "/ivd", Readonly: true, ImageSubPath: "data", Image: &runtimeapi.ImageSpec{Image: vol}},
	}
	id := runContainer(t, c, podID, pod, cfg)
	for _, tc := range []struct {
		argv []string
		fail bool
	}{
		{argv: []string{"ls", "/iv/bin/sh"}},
		{argv: []string{"cat", "/ivd/hello.txt"}},
		{argv: []string{"ls", "/ivd/data"}, fail: true},
		{argv: []string{"touch", "/iv/x"}, fail: true},
		{argv: []string{"touch", "/ivd/x"}, fail: true},
	} {
		out, errOut, err := c.Runtime.ExecSync(ctx, id, tc.argv, 60*time.Second)
		if (err != nil) != tc.fail {
			t.Errorf("%v in the VM pod: err %v (want failure: %v): %s%s", tc.argv, err, tc.fail, out, errOut)
		}
	}
	footprint := func() []string {
		ctrd, err := containerd.New(filepath.Join(c.StateDir, "containerd", "containerd.sock"), containerd.WithTimeout(10*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = ctrd.Close() }()
		return c.footprint(t, nil, ctrd, nil).of(volHex)
	}
	if held := footprint(); len(held) < 3 {
		t.Fatalf("the image volume's footprint (mount, view, lease) is %q", held)
	}
	if err := c.Runtime.RemovePodSandbox(ctx, podID); err != nil {
		t.Fatal(err)
	}
	if left := footprint(); len(left) > 0 {
		t.Fatalf("left of the image volume after its VM pod went:\n  %s", strings.Join(left, "\n  "))
	}
}

// TestCRIUserNamespaceImageVolume mounts an image volume into a container
// of a pod with a user namespace: id-mapped like every bind mount of such
// a pod, the image's files are the pod root's, and still read-only.
func TestCRIUserNamespaceImageVolume(t *testing.T) {
	c := startCRI(t)
	ctx := t.Context()
	busybox := c.pushBusybox(t, "e2e/busybox:userns", testimage.Options{})
	vol := c.pushBusybox(t, "e2e/volume:userns", testimage.Options{Files: map[string]string{"/data/hello.txt": "hello from the image\n"}})
	st, err := c.Images.ImageStatus(ctx, &runtimeapi.ImageSpec{Image: vol}, false)
	if err != nil || st.GetImage() == nil {
		t.Fatalf("volume image status: %v %v", st, err)
	}
	volHex := strings.TrimPrefix(st.GetImage().GetId(), "sha256:")
	mapping := []*runtimeapi.IDMapping{{ContainerId: 0, HostId: 3 * 65536, Length: 65536}}
	userns := &runtimeapi.NamespaceOption{UsernsOptions: &runtimeapi.UserNamespace{Mode: runtimeapi.NamespaceMode_POD, Uids: mapping, Gids: mapping}}
	pod := c.podConfig(t, "usernsimgvol")
	pod.Linux.SecurityContext = &runtimeapi.LinuxSandboxSecurityContext{NamespaceOptions: userns}
	podID, err := c.Runtime.RunPodSandbox(ctx, pod, "")
	if err != nil {
		t.Fatal(err)
	}
	cfg := secConfig("app", busybox, &runtimeapi.LinuxContainerSecurityContext{NamespaceOptions: userns})
	cfg.Mounts = []*runtimeapi.Mount{{ContainerPath: "/iv", Readonly: true, ImageSubPath: "data", Image: &runtimeapi.ImageSpec{Image: vol}}}
	id := runContainer(t, c, podID, pod, cfg)
	if got := execOut(t, c, id, "cat", "/iv/hello.txt"); got != "hello from the image" {
		t.Errorf("the image volume's file: %q", got)
	}
	if f := strings.Fields(execOut(t, c, id, "ls", "-n", "/iv/hello.txt")); len(f) < 4 || f[2] != "0" || f[3] != "0" {
		t.Errorf("owner of the image volume's file in the pod: %q", f)
	}
	if out, _, err := c.Runtime.ExecSync(ctx, id, []string{"touch", "/iv/x"}, 30*time.Second); err == nil {
		t.Errorf("wrote into the image volume: %s", out)
	}
	// The container's id-mapped copy is a mount of its own, beside the
	// volume's; both survive a kill -9 and go with the pod.
	mounts := func() []string {
		var out []string
		for _, s := range c.footprint(t, nil, nil, nil).of(volHex) {
			if strings.HasPrefix(s, "mount: ") {
				out = append(out, s)
			}
		}
		return out
	}
	if got := mounts(); len(got) != 2 || !strings.Contains(got[0]+got[1], "."+id) {
		t.Fatalf("image volume mounts %q, want the volume's and the container's copy", got)
	}
	c.Kill9()
	c.Restart(t)
	if got := mounts(); len(got) != 2 {
		t.Fatalf("image volume mounts after a kill -9 and restart %q", got)
	}
	if got := execOut(t, c, id, "cat", "/iv/hello.txt"); got != "hello from the image" {
		t.Errorf("the image volume's file after the restart: %q", got)
	}
	if err := c.Runtime.RemovePodSandbox(ctx, podID); err != nil {
		t.Fatal(err)
	}
	if got := mounts(); len(got) > 0 {
		t.Fatalf("left of the image volume after the pod went: %q", got)
	}
}
