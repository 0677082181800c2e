package image_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/pkg/containerdproc"
	"github.com/aurae-runtime/aurae-cri/pkg/image"
	"github.com/aurae-runtime/aurae-cri/test/testimage"
)

// env is a child containerd, an image service on it and a registry.
type env struct {
	proc *containerdproc.Proc
	svc  *image.Service
	reg  *testimage.Registry
}

func newEnv(t *testing.T, hostsDir string, regOpts ...testimage.RegistryOption) *env {
	t.Helper()
	return newEnvLogging(t, hostsDir, testimage.Logger(t), regOpts...)
}

// newEnvLogging is newEnv whose service logs to logger.
func newEnvLogging(t *testing.T, hostsDir string, logger *slog.Logger, regOpts ...testimage.RegistryOption) *env {
	t.Helper()
	proc := testimage.StartContainerd(t)
	reg := testimage.StartRegistry(t, regOpts...)
	if hostsDir == "" {
		hostsDir = reg.HostsDir(t)
	}
	svc, err := image.New(context.Background(), image.Options{
		Address:           proc.Address(),
		RegistryConfigDir: hostsDir,
		CallTimeout:       30 * time.Second,
		PullTimeout:       time.Minute,
		Logger:            logger,
	})
	if err != nil {
		t.Fatalf("image.New: %v", err)
	}
	t.Cleanup(func() { _ = svc.Close() })
	return &env{proc: proc, svc: svc, reg: reg}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func (e *env) pull(t *testing.T, ref string, auth *runtimeapi.AuthConfig) string {
	t.Helper()
	resp, err := e.svc.PullImage(ctxT(t), &runtimeapi.PullImageRequest{
		Image: &runtimeapi.ImageSpec{Image: ref},
		Auth:  auth,
	})
	if err != nil {
		t.Fatalf("PullImage(%s): %v", ref, err)
	}
	return resp.GetImageRef()
}

func (e *env) status(t *testing.T, spec string, verbose bool) *runtimeapi.ImageStatusResponse {
	t.Helper()
	resp, err := e.svc.ImageStatus(ctxT(t), &runtimeapi.ImageStatusRequest{
		Image:   &runtimeapi.ImageSpec{Image: spec},
		Verbose: verbose,
	})
	if err != nil {
		t.Fatalf("ImageStatus(%s): %v", spec, err)
	}
	return resp
}

func (e *env) list(t *testing.T, filter string) []*runtimeapi.Image {
	t.Helper()
	req := &runtimeapi.ListImagesRequest{}
	if filter != "" {
		req.Filter = &runtimeapi.ImageFilter{Image: &runtimeapi.ImageSpec{Image: filter}}
	}
	resp, err := e.svc.ListImages(ctxT(t), req)
	if err != nil {
		t.Fatalf("ListImages(%q): %v", filter, err)
	}
	return resp.GetImages()
}

func (e *env) remove(t *testing.T, spec string) {
	t.Helper()
	if _, err := e.svc.RemoveImage(ctxT(t), &runtimeapi.RemoveImageRequest{Image: &runtimeapi.ImageSpec{Image: spec}}); err != nil {
		t.Fatalf("RemoveImage(%s): %v", spec, err)
	}
}

func ids(imgs []*runtimeapi.Image) []string {
	var out []string
	for _, img := range imgs {
		out = append(out, img.GetId())
	}
	slices.Sort(out)
	return out
}

func wantCode(t *testing.T, err error, code codes.Code, contains string) {
	t.Helper()
	st, ok := status.FromError(err)
	if !ok {
		t.Fatalf("error %v is not a gRPC status", err)
	}
	if st.Code() != code {
		t.Fatalf("code = %s (%q), want %s", st.Code(), st.Message(), code)
	}
	if contains != "" && !strings.Contains(st.Message(), contains) {
		t.Fatalf("message %q does not contain %q", st.Message(), contains)
	}
}

func TestPullListStatusRemove(t *testing.T) {
	e := newEnv(t, "")
	imgUID := testimage.MustBusybox(t, testimage.Options{
		Entrypoint:   []string{"/bin/sh", "-c"},
		Cmd:          []string{"sleep 1000"},
		Env:          []string{"PATH=/bin", "FOO=bar"},
		WorkingDir:   "/tmp",
		User:         "1000:1000",
		ExposedPorts: []string{"8080/tcp"},
		Volumes:      []string{"/data"},
		StopSignal:   "SIGINT",
	})
	imgName := testimage.MustBusybox(t, testimage.Options{User: "app", Files: map[string]string{"/etc/motd": "hi\n"}})
	refUID := e.reg.Push(t, "test/uid:1.0", imgUID)
	refName := e.reg.Push(t, "test/name:v1", imgName)
	digestUID := testimage.DigestRef(t, refUID, imgUID)
	digestName := testimage.DigestRef(t, refName, imgName)
	idUID, idName := testimage.ImageID(t, imgUID), testimage.ImageID(t, imgName)

	if got := e.pull(t, refUID, nil); got != idUID {
		t.Fatalf("pull by tag: id %s, want %s", got, idUID)
	}
	if got := e.pull(t, digestName, nil); got != idName {
		t.Fatalf("pull by digest: id %s, want %s", got, idName)
	}
	// Pulling again is fine and gives the same id.
	if got := e.pull(t, refUID, nil); got != idUID {
		t.Fatalf("second pull: id %s, want %s", got, idUID)
	}

	t.Run("list", func(t *testing.T) {
		if got, want := ids(e.list(t, "")), ids([]*runtimeapi.Image{{Id: idUID}, {Id: idName}}); !slices.Equal(got, want) {
			t.Fatalf("list = %v, want %v", got, want)
		}
		for _, f := range []string{refUID, digestUID, idUID, strings.TrimPrefix(idUID, "sha256:")[:12]} {
			if got := ids(e.list(t, f)); !slices.Equal(got, []string{idUID}) {
				t.Errorf("list filter %q = %v, want [%s]", f, got, idUID)
			}
		}
		if got := e.list(t, digestName); len(got) != 1 || got[0].GetId() != idName {
			t.Errorf("list filter %q = %v", digestName, ids(got))
		}
		if got := e.list(t, e.reg.Ref("test/none:1")); len(got) != 0 {
			t.Errorf("list filter on absent image = %v", ids(got))
		}
	})

	t.Run("status", func(t *testing.T) {
		img := e.status(t, refUID, false).GetImage()
		if img == nil {
			t.Fatal("no image")
		}
		if img.GetId() != idUID || img.GetSize() == 0 {
			t.Errorf("id %s size %d", img.GetId(), img.GetSize())
		}
		if !slices.Equal(img.GetRepoTags(), []string{refUID}) || !slices.Equal(img.GetRepoDigests(), []string{digestUID}) {
			t.Errorf("tags %v digests %v, want [%s] [%s]", img.GetRepoTags(), img.GetRepoDigests(), refUID, digestUID)
		}
		if img.GetUid().GetValue() != 1000 || img.GetUid() == nil || img.GetUsername() != "" {
			t.Errorf("uid %v username %q, want uid 1000", img.GetUid(), img.GetUsername())
		}

		byName := e.status(t, idName, true)
		img = byName.GetImage()
		if img.GetUid() != nil || img.GetUsername() != "app" {
			t.Errorf("uid %v username %q, want username app", img.GetUid(), img.GetUsername())
		}
		if len(img.GetRepoTags()) != 0 || !slices.Equal(img.GetRepoDigests(), []string{digestName}) {
			t.Errorf("pulled by digest: tags %v digests %v", img.GetRepoTags(), img.GetRepoDigests())
		}
		var info struct {
			ChainID   string `json:"chainID"`
			ImageSpec struct {
				Config struct{ User string }
			} `json:"imageSpec"`
		}
		if err := json.Unmarshal([]byte(byName.GetInfo()["info"]), &info); err != nil {
			t.Fatalf("verbose info %q: %v", byName.GetInfo()["info"], err)
		}
		if !strings.HasPrefix(info.ChainID, "sha256:") || info.ImageSpec.Config.User != "app" {
			t.Errorf("verbose info = %+v", info)
		}
		if e.status(t, refUID, false).GetInfo() != nil {
			t.Error("info without verbose")
		}

		absent := e.status(t, e.reg.Ref("test/none:1"), false)
		if absent.GetImage() != nil {
			t.Errorf("absent image status = %v", absent.GetImage())
		}
		if e.status(t, "sha256:"+strings.Repeat("0", 64), false).GetImage() != nil {
			t.Error("absent id has a status")
		}
	})

	t.Run("resolve", func(t *testing.T) {
		img, err := e.svc.Resolve(ctxT(t), refUID)
		if err != nil {
			t.Fatal(err)
		}
		c := img.Config
		if img.ID != idUID || img.Size <= 0 || !slices.Equal(c.Entrypoint, []string{"/bin/sh", "-c"}) ||
			!slices.Equal(c.Cmd, []string{"sleep 1000"}) || !slices.Equal(c.Env, []string{"PATH=/bin", "FOO=bar"}) ||
			c.WorkingDir != "/tmp" || c.User != "1000:1000" || c.StopSignal != "SIGINT" {
			t.Errorf("resolved %+v", img)
		}
		if _, ok := c.ExposedPorts["8080/tcp"]; !ok {
			t.Errorf("exposed ports %v", c.ExposedPorts)
		}
		if _, ok := c.Volumes["/data"]; !ok {
			t.Errorf("volumes %v", c.Volumes)
		}
		if _, err := e.svc.Resolve(ctxT(t), e.reg.Ref("test/none:1")); !errdefs.IsNotFound(err) {
			t.Errorf("resolve absent: %v, want not found", err)
		}
	})

	t.Run("concurrent pulls", func(t *testing.T) {
		errs := make(chan error, 4)
		for range 4 {
			go func() {
				resp, err := e.svc.PullImage(ctxT(t), &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: refName}})
				if err == nil && resp.GetImageRef() != idName {
					err = fmt.Errorf("id %s, want %s", resp.GetImageRef(), idName)
				}
				errs <- err
			}()
		}
		for range 4 {
			if err := <-errs; err != nil {
				t.Errorf("concurrent pull: %v", err)
			}
		}
		// The tag pulled here joins the digest pulled before.
		if tags := e.status(t, idName, false).GetImage().GetRepoTags(); !slices.Equal(tags, []string{refName}) {
			t.Errorf("tags after pulling by tag = %v", tags)
		}
	})

	t.Run("imagefs", func(t *testing.T) {
		resp, err := e.svc.ImageFsInfo(ctxT(t), &runtimeapi.ImageFsInfoRequest{})
		if err != nil {
			t.Fatal(err)
		}
		fs := resp.GetImageFilesystems()
		if len(fs) != 1 {
			t.Fatalf("filesystems %v", fs)
		}
		wantRoot := filepath.Join(e.proc.Root(), "io.containerd.snapshotter.v1.overlayfs")
		if fs[0].GetFsId().GetMountpoint() != wantRoot {
			t.Errorf("mountpoint %q, want %q", fs[0].GetFsId().GetMountpoint(), wantRoot)
		}
		// busybox alone is about 2 MB.
		if fs[0].GetUsedBytes().GetValue() < 1<<20 || fs[0].GetInodesUsed().GetValue() == 0 || fs[0].GetTimestamp() == 0 {
			t.Errorf("usage %v", fs[0])
		}
	})

	t.Run("remove", func(t *testing.T) {
		for _, tc := range []struct{ name, spec string }{
			{"by tag", refUID},
			{"by id", idUID},
			{"by digest", digestUID},
		} {
			if got := e.pull(t, refUID, nil); got != idUID {
				t.Fatalf("re-pull: %s", got)
			}
			e.remove(t, tc.spec)
			for _, s := range []string{refUID, idUID, digestUID} {
				if img := e.status(t, s, false).GetImage(); img != nil {
					t.Errorf("%s: %s still present after remove", tc.name, s)
				}
			}
			if got := ids(e.list(t, "")); !slices.Equal(got, []string{idName}) {
				t.Errorf("%s: list after remove = %v", tc.name, got)
			}
		}
		// Removing what is not there succeeds.
		e.remove(t, refUID)
		e.remove(t, "sha256:"+strings.Repeat("1", 64))
		e.remove(t, "docker.io/library/never-pulled:1")
	})
}

func TestPullErrors(t *testing.T) {
	e := newEnv(t, "")
	missing := e.reg.Ref("test/missing:1")
	_, err := e.svc.PullImage(ctxT(t), &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: missing}})
	wantCode(t, err, codes.NotFound, missing)

	for _, bad := range []string{"", "Upper/Case:1", "foo::bar", "sha256:" + strings.Repeat("a", 64), "a b"} {
		_, err := e.svc.PullImage(ctxT(t), &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: bad}})
		wantCode(t, err, codes.InvalidArgument, "")
	}
}

func TestPullWithBasicAuth(t *testing.T) {
	e := newEnv(t, "", testimage.WithBasicAuth("alice", "s3cret"))
	img := testimage.MustBusybox(t, testimage.Options{})
	ref := e.reg.Push(t, "private/busybox:1", img)
	pull := func(auth *runtimeapi.AuthConfig) error {
		_, err := e.svc.PullImage(ctxT(t), &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: ref}, Auth: auth})
		return err
	}
	wantCode(t, pull(nil), codes.Unauthenticated, ref)
	wantCode(t, pull(&runtimeapi.AuthConfig{Username: "alice", Password: "wrong"}), codes.Unauthenticated, ref)
	// Credentials for another registry are not sent.
	wantCode(t, pull(&runtimeapi.AuthConfig{Username: "alice", Password: "s3cret", ServerAddress: "other.example:5000"}), codes.Unauthenticated, "")
	if err := pull(&runtimeapi.AuthConfig{Username: "alice", Password: "s3cret", ServerAddress: e.reg.Host}); err != nil {
		t.Fatalf("pull with the right credentials: %v", err)
	}
	e.remove(t, ref)
	// The base64 "user:password" form.
	if err := pull(&runtimeapi.AuthConfig{Auth: "YWxpY2U6czNjcmV0"}); err != nil {
		t.Fatalf("pull with auth string: %v", err)
	}
	if got := e.status(t, ref, false).GetImage().GetId(); got != testimage.ImageID(t, img) {
		t.Fatalf("status after authenticated pull: %q", got)
	}
}

// TestMirrorFromHostsDir pulls "busybox" (docker.io/library/busybox:latest)
// from a loopback mirror that only the registry config dir names.
func TestMirrorFromHostsDir(t *testing.T) {
	dir := t.TempDir()
	e := newEnv(t, dir)
	testimage.WriteHostsFile(t, dir, "docker.io", e.reg.Host)
	img := testimage.MustBusybox(t, testimage.Options{})
	e.reg.Push(t, "library/busybox:latest", img)

	id := e.pull(t, "busybox", nil)
	if id != testimage.ImageID(t, img) {
		t.Fatalf("id %s", id)
	}
	st := e.status(t, "busybox", false).GetImage()
	if !slices.Equal(st.GetRepoTags(), []string{"docker.io/library/busybox:latest"}) {
		t.Errorf("tags %v", st.GetRepoTags())
	}
	if len(st.GetRepoDigests()) != 1 || !strings.HasPrefix(st.GetRepoDigests()[0], "docker.io/library/busybox@sha256:") {
		t.Errorf("digests %v", st.GetRepoDigests())
	}
	if got := ids(e.list(t, "docker.io/library/busybox")); !slices.Equal(got, []string{id}) {
		t.Errorf("list by normalized name = %v", got)
	}
}

func TestRootfs(t *testing.T) {
	e := newEnv(t, "")
	img := testimage.MustBusybox(t, testimage.Options{Files: map[string]string{"/etc/motd": "from the image\n"}})
	other := testimage.MustBusybox(t, testimage.Options{User: "app"})
	ref := e.reg.Push(t, "test/rootfs:1", img)
	otherRef := e.reg.Push(t, "test/other:1", other)
	e.pull(t, ref, nil)
	e.pull(t, otherRef, nil)

	const cid = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	mounts, err := e.svc.PrepareRootfs(ctxT(t), cid, ref)
	if err != nil {
		t.Fatalf("PrepareRootfs: %v", err)
	}
	if len(mounts) != 1 || mounts[0].Type != "overlay" {
		t.Fatalf("mounts %+v, want one overlay", mounts)
	}
	again, err := e.svc.PrepareRootfs(ctxT(t), cid, ref)
	if err != nil {
		t.Fatalf("PrepareRootfs again: %v", err)
	}
	if len(again) != 1 || !slices.Equal(again[0].Options, mounts[0].Options) {
		t.Errorf("second PrepareRootfs gave %+v, want %+v", again, mounts)
	}
	if _, err := e.svc.PrepareRootfs(ctxT(t), cid, otherRef); !errdefs.IsAlreadyExists(err) {
		t.Errorf("PrepareRootfs of the same container on another image: %v, want already exists", err)
	}
	if _, err := e.svc.PrepareRootfs(ctxT(t), "bad/id", ref); !errdefs.IsInvalidArgument(err) {
		t.Errorf("PrepareRootfs with a bad id: %v, want invalid argument", err)
	}
	if _, err := e.svc.PrepareRootfs(ctxT(t), "c2", e.reg.Ref("test/none:1")); !errdefs.IsNotFound(err) {
		t.Errorf("PrepareRootfs of an absent image: %v, want not found", err)
	}

	checkMount(t, mounts)

	// The image goes, the rootfs (and the layers under it) stays.
	e.remove(t, ref)
	if n := snapshotCount(t, e); n < 2 {
		t.Errorf("%d snapshots after removing the image, want the rootfs and its layer", n)
	}
	checkMount(t, mounts)

	if err := e.svc.RemoveRootfs(ctxT(t), cid); err != nil {
		t.Fatalf("RemoveRootfs: %v", err)
	}
	if _, err := e.svc.RootfsMounts(ctxT(t), cid); !errdefs.IsNotFound(err) {
		t.Errorf("rootfs mounts after remove: %v, want not found", err)
	}
	if err := e.svc.RemoveRootfs(ctxT(t), cid); err != nil {
		t.Fatalf("RemoveRootfs again: %v", err)
	}
	// The removed image's own layer goes with the rootfs lease (at
	// containerd's next collection); the busybox layer it shares with the
	// other image stays.
	collectGarbage(t, e)
	if n := snapshotCount(t, e); n != 1 {
		t.Errorf("%d snapshots after removing the rootfs, want the shared busybox layer", n)
	}
	e.remove(t, otherRef)
	if n := snapshotCount(t, e); n != 0 {
		t.Errorf("%d snapshots left after removing every image and rootfs", n)
	}
}

// checkMount mounts the rootfs, reads busybox and a file of the second layer
// from it, writes a file, and unmounts it.
func checkMount(t *testing.T, ms []image.Mount) {
	t.Helper()
	withRootfs(t, ms, func(target string) {
		got, err := os.ReadFile(filepath.Join(target, "bin/busybox"))
		if err != nil {
			t.Fatalf("read busybox from the rootfs: %v", err)
		}
		want, err := os.ReadFile(testimage.BusyboxPath)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("busybox in the rootfs differs from %s (%d vs %d bytes)", testimage.BusyboxPath, len(got), len(want))
		}
		if link, err := os.Readlink(filepath.Join(target, "bin/sh")); err != nil || link != "busybox" {
			t.Errorf("bin/sh -> %q, %v", link, err)
		}
		if motd, err := os.ReadFile(filepath.Join(target, "etc/motd")); err != nil || string(motd) != "from the image\n" {
			t.Errorf("etc/motd = %q, %v", motd, err)
		}
		if err := os.WriteFile(filepath.Join(target, "tmp/written"), []byte("x"), 0o644); err != nil {
			t.Errorf("rootfs is not writable: %v", err)
		}
	})
}

// withRootfs mounts ms in a temp dir, runs f on it and unmounts it.
func withRootfs(t *testing.T, ms []image.Mount, f func(target string)) {
	t.Helper()
	target := t.TempDir()
	cms := make([]mount.Mount, len(ms))
	for i, m := range ms {
		cms[i] = mount.Mount{Type: m.Type, Source: m.Source, Options: m.Options}
	}
	if err := mount.All(cms, target); err != nil {
		t.Fatalf("mount rootfs: %v", err)
	}
	defer func() {
		if err := mount.UnmountAll(target, 0); err != nil {
			t.Errorf("unmount rootfs: %v", err)
		}
	}()
	f(target)
}

// collectGarbage runs a containerd garbage collection now: the synchronous
// deletion of a lease of its own.
func collectGarbage(t *testing.T, e *env) {
	t.Helper()
	c, err := containerd.New(e.proc.Address())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	ctx := namespaces.WithNamespace(ctxT(t), e.svc.Namespace())
	l, err := c.LeasesService().Create(ctx, leases.WithRandomID())
	if err != nil {
		t.Fatal(err)
	}
	if err := c.LeasesService().Delete(ctx, l, leases.SynchronousDelete); err != nil {
		t.Fatal(err)
	}
}

func snapshotCount(t *testing.T, e *env) int {
	t.Helper()
	c, err := containerd.New(e.proc.Address())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	ctx := namespaces.WithNamespace(ctxT(t), e.svc.Namespace())
	n := 0
	if err := c.SnapshotService(e.svc.Snapshotter()).Walk(ctx, func(context.Context, snapshots.Info) error {
		n++
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestRootfsLeaseMigration: a rootfs made by an earlier version, held by
// a lease, is a GC root of its own once a service starts: the lease is
// gone, a garbage collection after its image's removal keeps the rootfs,
// and RemoveRootfs removes it.
func TestRootfsLeaseMigration(t *testing.T) {
	e := newEnv(t, "")
	ref := e.reg.Push(t, "test/migrate:1", testimage.MustBusybox(t, testimage.Options{Env: []string{"MIGRATE=1"}}))
	e.pull(t, ref, nil)
	img, err := e.svc.Resolve(ctxT(t), ref)
	if err != nil {
		t.Fatal(err)
	}
	c, err := containerd.New(e.proc.Address())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	ctx := namespaces.WithNamespace(ctxT(t), e.svc.Namespace())
	const cid = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210"
	labels := map[string]string{image.LabelContainerID: cid}
	l, err := c.LeasesService().Create(ctx, leases.WithID(image.RootfsLease(cid)), leases.WithLabels(labels))
	if err != nil {
		t.Fatal(err)
	}
	sn := c.SnapshotService(e.svc.Snapshotter())
	if _, err := sn.Prepare(leases.WithLease(ctx, l.ID), image.RootfsKey(cid), img.ChainID, snapshots.WithLabels(labels)); err != nil {
		t.Fatal(err)
	}

	svc, err := image.New(context.Background(), image.Options{Address: e.proc.Address(), CallTimeout: 30 * time.Second, Logger: testimage.Logger(t)})
	if err != nil {
		t.Fatalf("image.New: %v", err)
	}
	defer func() { _ = svc.Close() }()
	if ls, err := c.LeasesService().List(ctx, "id=="+l.ID); err != nil || len(ls) != 0 {
		t.Fatalf("rootfs leases after the start: %v (%v), want none", ls, err)
	}
	info, err := sn.Stat(ctx, image.RootfsKey(cid))
	if err != nil {
		t.Fatalf("rootfs snapshot after the start: %v", err)
	}
	if _, ok := info.Labels["containerd.io/gc.root"]; !ok {
		t.Fatalf("rootfs snapshot labels %v: not a GC root", info.Labels)
	}
	e.remove(t, ref) // collects garbage
	if _, err := sn.Stat(ctx, image.RootfsKey(cid)); err != nil {
		t.Fatalf("rootfs snapshot after its image's removal: %v", err)
	}
	if err := svc.RemoveRootfs(ctxT(t), cid); err != nil {
		t.Fatalf("RemoveRootfs: %v", err)
	}
	collectGarbage(t, e)
	if n := snapshotCount(t, e); n != 0 {
		t.Errorf("%d snapshots left after removing the image and the rootfs", n)
	}
}
