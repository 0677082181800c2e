package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/pkg/ocispec"
	"github.com/aurae-runtime/aurae-cri/test/testimage"
)

// denyChmod is a seccomp profile that allows everything but chmod.
const denyChmod = `{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["chmod","fchmod","fchmodat","fchmodat2"],"action":"SCMP_ACT_ERRNO"}]}`

// secConfig is a sleeping container with a security context.
func secConfig(name, image string, sc *runtimeapi.LinuxContainerSecurityContext, command ...string) *runtimeapi.ContainerConfig {
	if len(command) == 0 {
		command = []string{"sleep", "1000"}
	}
	cfg := containerConfig(name, image, command...)
	cfg.Linux.SecurityContext = sc
	return cfg
}

// execOut runs argv in the container and returns its stdout, failing the
// test when it does not exit 0.
func execOut(t *testing.T, c *CRI, id string, argv ...string) string {
	t.Helper()
	out, errOut, err := c.Runtime.ExecSync(t.Context(), id, argv, 30*time.Second)
	if err != nil {
		t.Fatalf("exec %q: %v\n%s%s", argv, err, out, errOut)
	}
	return strings.TrimSpace(string(out))
}

// TestCRISecurity observes from inside containers what their security
// context asks for: seccomp (RuntimeDefault, a Localhost profile,
// Unconfined), supplemental groups (Merge, Strict), a recursive read-only
// mount, the stop signal (config and image); what cannot be applied is
// refused and leaves nothing.
func TestCRISecurity(t *testing.T) {
	c := startCRI(t)
	ctx := t.Context()
	image := c.pushBusybox(t, "e2e/busybox:sec", testimage.Options{
		StopSignal: "SIGQUIT",
		Files: map[string]string{
			"/etc/passwd": "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/:/bin/sh\n",
			"/etc/group":  "root:x:0:\napp:x:1000:\nextra:x:2000:app\nother:x:2001:root\n",
		},
	})
	pod := c.podConfig(t, "security")
	podID, err := c.Runtime.RunPodSandbox(ctx, pod, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = c.Runtime.StopPodSandbox(ctx, podID)
		_ = c.Runtime.RemovePodSandbox(ctx, podID)
	})

	t.Run("seccomp", func(t *testing.T) {
		profile := filepath.Join(t.TempDir(), "deny-chmod.json")
		if err := os.WriteFile(profile, []byte(denyChmod), 0o644); err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct {
			name      string
			profile   *runtimeapi.SecurityProfile
			want      string
			chmodFail bool
		}{
			{"runtime-default", &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_RuntimeDefault}, "2", false},
			{"localhost", &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Localhost, LocalhostRef: profile}, "2", true},
			{"unconfined", &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Unconfined}, "0", false},
		} {
			id := runContainer(t, c, podID, pod, secConfig("seccomp-"+tc.name, image, &runtimeapi.LinuxContainerSecurityContext{Seccomp: tc.profile}))
			waitContainerState(t, c, id, runtimeapi.ContainerState_CONTAINER_RUNNING)
			if got := execOut(t, c, id, "busybox", "grep", "Seccomp:", "/proc/self/status"); strings.TrimSpace(strings.TrimPrefix(got, "Seccomp:")) != tc.want {
				t.Errorf("%s: %q, want Seccomp: %s", tc.name, got, tc.want)
			}
			_, _, err := c.Runtime.ExecSync(ctx, id, []string{"sh", "-c", "busybox touch /tmp/x && busybox chmod 600 /tmp/x"}, 30*time.Second)
			if (err != nil) != tc.chmodFail {
				t.Errorf("%s: chmod: %v, want failure %v", tc.name, err, tc.chmodFail)
			}
		}

		// A missing profile is refused and leaves no container.
		missing := secConfig("seccomp-missing", image, &runtimeapi.LinuxContainerSecurityContext{Seccomp: &runtimeapi.SecurityProfile{
			ProfileType: runtimeapi.SecurityProfile_Localhost, LocalhostRef: filepath.Join(t.TempDir(), "missing.json"),
		}})
		if _, err := c.Runtime.CreateContainer(ctx, podID, missing, pod); status.Code(err) != codes.InvalidArgument {
			t.Errorf("missing localhost profile: %v, want InvalidArgument", err)
		}
		left, err := c.Runtime.ListContainers(ctx, &runtimeapi.ContainerFilter{LabelSelector: map[string]string{"container": "seccomp-missing"}})
		if err != nil || len(left) != 0 {
			t.Errorf("after the refused create: %v %v", left, err)
		}
		// The name is free again: the same container with a good profile is made.
		missing.Linux.SecurityContext.Seccomp.LocalhostRef = profile
		id, err := c.Runtime.CreateContainer(ctx, podID, missing, pod)
		if err != nil {
			t.Fatalf("create after a refused one: %v", err)
		}
		if err := c.Runtime.RemoveContainer(ctx, id); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("apparmor", func(t *testing.T) {
		if ocispec.ProbeHost().AppArmor {
			t.Skip("this host has AppArmor: the refusal is for hosts without it")
		}
		cfg := secConfig("apparmor-localhost", image, &runtimeapi.LinuxContainerSecurityContext{Apparmor: &runtimeapi.SecurityProfile{
			ProfileType: runtimeapi.SecurityProfile_Localhost, LocalhostRef: "some-profile",
		}})
		if _, err := c.Runtime.CreateContainer(ctx, podID, cfg, pod); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "AppArmor is not enabled") {
			t.Errorf("AppArmor localhost profile without AppArmor: %v, want InvalidArgument", err)
		}
		cfg = secConfig("apparmor-default", image, &runtimeapi.LinuxContainerSecurityContext{Apparmor: &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_RuntimeDefault}})
		id := runContainer(t, c, podID, pod, cfg)
		waitContainerState(t, c, id, runtimeapi.ContainerState_CONTAINER_RUNNING)
	})

	t.Run("supplemental groups", func(t *testing.T) {
		for _, tc := range []struct {
			policy runtimeapi.SupplementalGroupsPolicy
			want   string
			groups []int64
		}{
			{runtimeapi.SupplementalGroupsPolicy_Merge, "1000 2000 3000", []int64{1000, 2000, 3000}},
			{runtimeapi.SupplementalGroupsPolicy_Strict, "1000 3000", []int64{1000, 3000}},
		} {
			name := "groups-" + strings.ToLower(tc.policy.String())
			id := runContainer(t, c, podID, pod, secConfig(name, image, &runtimeapi.LinuxContainerSecurityContext{
				RunAsUsername: "app", SupplementalGroups: []int64{3000}, SupplementalGroupsPolicy: tc.policy,
			}))
			st := waitContainerState(t, c, id, runtimeapi.ContainerState_CONTAINER_RUNNING)
			if got := execOut(t, c, id, "busybox", "id", "-G"); got != tc.want {
				t.Errorf("%s: id -G %q, want %q", tc.policy, got, tc.want)
			}
			u := st.GetUser().GetLinux()
			if u.GetUid() != 1000 || u.GetGid() != 1000 || !equalInts(u.GetSupplementalGroups(), tc.groups) {
				t.Errorf("%s: status user %v, want uid 1000 gid 1000 groups %v", tc.policy, u, tc.groups)
			}
		}
	})

	t.Run("recursive read-only mount", func(t *testing.T) {
		if !ocispec.ProbeHost().RecursiveReadOnly {
			t.Skip("the kernel lacks mount_setattr")
		}
		dir := t.TempDir()
		sub := filepath.Join(dir, "sub")
		if err := os.Mkdir(sub, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := syscall.Mount("tmpfs", sub, "tmpfs", 0, "size=1m"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := syscall.Unmount(sub, syscall.MNT_DETACH); err != nil {
				t.Errorf("unmount %s: %v", sub, err)
			}
		})
		mount := func(rro bool) *runtimeapi.ContainerConfig {
			name := "ro"
			if rro {
				name = "rro"
			}
			cfg := secConfig("mount-"+name, image, nil)
			cfg.Mounts = []*runtimeapi.Mount{{ContainerPath: "/data", HostPath: dir, Readonly: true, RecursiveReadOnly: rro}}
			return cfg
		}
		rro := runContainer(t, c, podID, pod, mount(true))
		ro := runContainer(t, c, podID, pod, mount(false))
		waitContainerState(t, c, rro, runtimeapi.ContainerState_CONTAINER_RUNNING)
		waitContainerState(t, c, ro, runtimeapi.ContainerState_CONTAINER_RUNNING)
		if _, _, err := c.Runtime.ExecSync(ctx, rro, []string{"touch", "/data/sub/x"}, 30*time.Second); err == nil {
			t.Error("wrote in the submount of a recursive read-only mount")
		}
		if _, _, err := c.Runtime.ExecSync(ctx, ro, []string{"touch", "/data/sub/y"}, 30*time.Second); err != nil {
			t.Errorf("a plain read-only mount's submount is writable, yet: %v", err)
		}
		if _, _, err := c.Runtime.ExecSync(ctx, ro, []string{"touch", "/data/z"}, 30*time.Second); err == nil {
			t.Error("wrote in a read-only mount")
		}
		// Refused: rro without readonly, rro with propagation.
		bad := mount(true)
		bad.Metadata.Name = "mount-bad"
		bad.Mounts[0].Readonly = false
		if _, err := c.Runtime.CreateContainer(ctx, podID, bad, pod); status.Code(err) != codes.InvalidArgument {
			t.Errorf("rro without readonly: %v, want InvalidArgument", err)
		}
		bad.Mounts[0].Readonly, bad.Mounts[0].Propagation = true, runtimeapi.MountPropagation_PROPAGATION_HOST_TO_CONTAINER
		if _, err := c.Runtime.CreateContainer(ctx, podID, bad, pod); status.Code(err) != codes.InvalidArgument {
			t.Errorf("rro with host-to-container propagation: %v, want InvalidArgument", err)
		}
		resp, err := c.Runtime.Status(ctx, false)
		if err != nil {
			t.Fatal(err)
		}
		for _, h := range resp.GetRuntimeHandlers() {
			if !h.GetFeatures().GetRecursiveReadOnlyMounts() {
				t.Errorf("handler %q does not report recursive_read_only_mounts", h.GetName())
			}
		}
		if !resp.GetFeatures().GetSupplementalGroupsPolicy() {
			t.Error("supplemental_groups_policy not reported")
		}
	})

	t.Run("stop signal", func(t *testing.T) {
		out := t.TempDir()
		script := `trap "echo got QUIT > /out/$NAME; exit 0" QUIT; trap "echo got USR1 > /out/$NAME; exit 0" USR1; trap "echo got TERM > /out/$NAME; exit 3" TERM; echo ready > /out/$NAME.ready; while true; do sleep 0.1; done`
		for _, tc := range []struct {
			name   string
			signal runtimeapi.Signal
			want   string
		}{
			{"image", runtimeapi.Signal_SIGNAL_RUNTIME_DEFAULT, "got QUIT"}, // the image's STOPSIGNAL
			{"config", runtimeapi.Signal_SIGNAL_SIGUSR1, "got USR1"},        // the config's wins
		} {
			cfg := secConfig("stop-"+tc.name, image, nil, "sh", "-c", script)
			cfg.Envs = []*runtimeapi.KeyValue{{Key: "NAME", Value: []byte(tc.name)}}
			cfg.Mounts = []*runtimeapi.Mount{{ContainerPath: "/out", HostPath: out}}
			cfg.StopSignal = tc.signal
			id := runContainer(t, c, podID, pod, cfg)
			waitFile(t, filepath.Join(out, tc.name+".ready"))
			if err := c.Runtime.StopContainer(ctx, id, 30); err != nil {
				t.Fatal(err)
			}
			st := waitContainerState(t, c, id, runtimeapi.ContainerState_CONTAINER_EXITED)
			b, _ := os.ReadFile(filepath.Join(out, tc.name))
			if got := strings.TrimSpace(string(b)); got != tc.want || st.GetExitCode() != 0 {
				t.Errorf("%s: %q exit %d, want %q exit 0", tc.name, got, st.GetExitCode(), tc.want)
			}
			wantSig := tc.signal
			if wantSig == runtimeapi.Signal_SIGNAL_RUNTIME_DEFAULT {
				wantSig = runtimeapi.Signal_SIGNAL_SIGQUIT
			}
			if st.GetStopSignal() != wantSig {
				t.Errorf("%s: status stop signal %s, want %s", tc.name, st.GetStopSignal(), wantSig)
			}
		}
	})
}

func equalInts(a, b []int64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// waitFile waits until path exists.
func waitFile(t *testing.T, path string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := os.Stat(path); err == nil {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s never appeared", path)
}

// TestCRIPidsLimit: with --pids-limit every container's pids cgroup has
// that limit, and a container cannot run more processes than it allows.
func TestCRIPidsLimit(t *testing.T) {
	c := startCRI(t, "--pids-limit", "16")
	ctx := t.Context()
	image := c.pushBusybox(t, "e2e/busybox:pids", testimage.Options{})
	pod := c.podConfig(t, "pids")
	podID, err := c.Runtime.RunPodSandbox(ctx, pod, "")
	if err != nil {
		t.Fatal(err)
	}
	id := runContainer(t, c, podID, pod, containerConfig("limited", image, "sleep", "3000"))
	waitContainerState(t, c, id, runtimeapi.ContainerState_CONTAINER_RUNNING)
	out, _, err := c.Runtime.ExecSync(ctx, id, []string{"cat", "/sys/fs/cgroup/pids/pids.max"}, 30*time.Second)
	if err != nil || strings.TrimSpace(string(out)) != "16" {
		t.Fatalf("pids.max in the container: %q %v, want 16", out, err)
	}
	// 30 sleeps in the background: the fork past the limit fails.
	out, errOut, err := c.Runtime.ExecSync(ctx, id, []string{"sh", "-c", "n=0; while [ $n -lt 30 ]; do sleep 100 </dev/null >/dev/null 2>&1 & n=$((n+1)); done"}, 30*time.Second)
	if msg := string(out) + string(errOut); !strings.Contains(msg, "fork") {
		t.Errorf("30 processes under a limit of 16: %q %v, want a failed fork", msg, err)
	}
}
