package roles_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aurae-runtime/aurae-cri/internal/linux"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/cells"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/guest"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/pods"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/roles"
)

// The variables that choose a role, and the exec shim's pid file: the wire
// contract between a parent and its helpers.
var roleEnv = []string{pods.ExecShimEnv, pods.HolderEnv, cells.InitEnv, guest.ServeEnv}

const execShimPidFileEnv = "_AURAE_EXEC_SHIM_PIDFILE"

// TestMain dispatches as the daemons' main does: the children the tests
// start from this binary with a role's variable set play that role here.
func TestMain(m *testing.M) {
	roles.Run()
	os.Exit(m.Run())
}

// clearRoles unsets every role variable for the test.
func clearRoles(t *testing.T) {
	for _, e := range append(roleEnv, execShimPidFileEnv) {
		t.Setenv(e, "") // restored after the test
		if err := os.Unsetenv(e); err != nil {
			t.Fatal(err)
		}
	}
}

// childEnv is this process's environment without role variables, plus env.
func childEnv(env ...string) []string {
	var out []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "_AURAE_") && !strings.HasPrefix(kv, "GORACE=") {
			out = append(out, kv)
		}
	}
	// A race-detector build sleeps 1 s at exit by default.
	return append(append(out, "GORACE=atexit_sleep_ms=0"), env...)
}

// TestRunWithoutRole: with no role chosen, Run returns and main goes on.
func TestRunWithoutRole(t *testing.T) {
	clearRoles(t)
	roles.Run()
	roles.Run(roles.Guest) // not PID 1, no --guest
}

// TestRunWithoutGuestOption: without Guest (aurae-cri), the guest roles are
// never chosen, even with their variable set.
func TestRunWithoutGuestOption(t *testing.T) {
	clearRoles(t)
	t.Setenv(guest.ServeEnv, "1")
	roles.Run()
}

// TestExecShimRole: a child started with pods.ExecShimEnv runs the runtime
// with its arguments (here a shell whose command detaches a process and
// writes its pid, as runc exec --detach does) and exits with the status of
// that process, which only the exec shim reaps and reports.
func TestExecShimRole(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "exec.pid")
	cmd := exec.Command("/proc/self/exe", "-c", fmt.Sprintf("(sleep 0.2; exit 7) & echo $! > %s", pidFile))
	cmd.Env = childEnv(pods.ExecShimEnv+"=/bin/sh", execShimPidFileEnv+"="+pidFile)
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 7 {
		t.Fatalf("exec shim child: %v, want exit status 7 (the detached command's); output:\n%s", err, out)
	}
}

// TestHolderRoles: a child started with pods.HolderEnv or cells.InitEnv
// (creating no namespaces) reports ready on its pipe and keeps running
// until killed. Were it not dispatched, it would run no test and exit
// without a word.
func TestHolderRoles(t *testing.T) {
	for _, tc := range []struct {
		name string
		env  string
		fd   int // where the role reads its ready pipe
	}{
		{"pod namespace holder", pods.HolderEnv, 3},
		{"cell init", cells.InitEnv, 5}, // nsexec.FirstExtraFD
	} {
		t.Run(tc.name, func(t *testing.T) {
			readyR, readyW, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			defer readyR.Close()
			cmd := exec.Command("/proc/self/exe", "-test.run=^$")
			cmd.Env = childEnv(tc.env + "=")
			cmd.ExtraFiles = make([]*os.File, tc.fd-3+1)
			cmd.ExtraFiles[tc.fd-3] = readyW
			err = cmd.Start()
			readyW.Close()
			if err != nil {
				t.Fatal(err)
			}
			exited := make(chan error, 1)
			go func() { exited <- cmd.Wait() }()
			defer func() {
				_ = cmd.Process.Kill()
				t.Logf("%s child: %v", tc.name, <-exited) // killed
			}()
			if err := linux.WaitReady(context.Background(), readyR, 10*time.Second); err != nil {
				t.Fatalf("%s child: %v", tc.name, err)
			}
			// A holder ignores SIGINT: only SIGKILL ends it.
			if err := cmd.Process.Signal(os.Interrupt); err != nil {
				t.Fatal(err)
			}
			select {
			case err := <-exited:
				exited <- err
				t.Fatalf("%s child exited after ready and SIGINT: %v", tc.name, err)
			case <-time.After(200 * time.Millisecond):
			}
		})
	}
}
