package hypervisor

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) {
	if _, ok := os.LookupEnv(VirtiofsdEnv); ok {
		RunVirtiofsd()
	}
	os.Exit(m.Run())
}

// launch runs script with /bin/sh through the virtiofsd launcher role, as
// virtiofsd would run: in its mount namespace, under its filter.
func launch(t *testing.T, source string, readonly bool, script string) (string, error) {
	t.Helper()
	// cd again: the view of source that counts is the launcher's bind.
	cmd := exec.Command(os.Args[0], "virtiofsd-launcher", "--", "/bin/sh", "-c", `cd "$1" && `+script, "sh", source)
	cmd.Env = []string{VirtiofsdEnv + "=" + source}
	if readonly {
		cmd.Env = append(cmd.Env, virtiofsdEnvReadOnly+"=1")
	}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// TestVirtiofsdLauncherConfines: what virtiofsd does for a guest cannot
// make a set-user-ID or set-group-ID file, a device node or an extended
// attribute; everything else works; the share is nosuid,nodev in its mount
// namespace (and read-only when asked), the host's view unchanged.
func TestVirtiofsdLauncherConfines(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root (mount namespaces)")
		}
		t.Skip("needs root (mount namespaces)")
	}
	src := t.TempDir()
	script := `
set -u
try() { if "$@" 2>/dev/null; then echo "ok: $*"; else echo "refused: $*"; fi; }
touch f && echo created
try chmod 4755 f
try chmod 2755 f
try chmod 0755 f
try mknod c c 1 3
try mknod b b 7 0
try mkfifo p
try mkdir -m 2755 d
grep " $PWD " /proc/self/mountinfo | head -1
`
	out, err := launch(t, src, false, script)
	if err != nil {
		t.Fatalf("launcher: %v\n%s", err, out)
	}
	for _, want := range []string{"created", "refused: chmod 4755 f", "refused: chmod 2755 f", "ok: chmod 0755 f",
		"refused: mknod c c 1 3", "refused: mknod b b 7 0", "ok: mkfifo p"} {
		if !strings.Contains(out, want+"\n") {
			t.Errorf("want %q in:\n%s", want, out)
		}
	}
	if !strings.Contains(out, "nosuid") || !strings.Contains(out, "nodev") {
		t.Errorf("the share is not nosuid,nodev in the launcher's mount namespace:\n%s", out)
	}
	var st unix.Stat_t
	if err := unix.Stat(filepath.Join(src, "f"), &st); err != nil {
		t.Fatal(err)
	}
	if st.Mode&(unix.S_ISUID|unix.S_ISGID) != 0 || st.Mode&0o777 != 0o755 {
		t.Errorf("f on the host: mode %o", st.Mode)
	}
	for _, n := range []string{"c", "b"} {
		if _, err := os.Lstat(filepath.Join(src, n)); err == nil {
			t.Errorf("device node %s exists on the host", n)
		}
	}
	// The host's own view of src is not a mount point of the launcher's.
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(mi), " "+src+" ") {
		t.Errorf("the launcher's bind of %s leaked into the host's mount namespace", src)
	}

	out, err = launch(t, src, true, `if touch g 2>/dev/null; then echo wrote; else echo read-only; fi`)
	if err != nil || !strings.Contains(out, "read-only") {
		t.Errorf("read-only share: %v\n%s", err, out)
	}
}
