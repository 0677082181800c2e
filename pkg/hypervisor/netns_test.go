package hypervisor

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aurae-runtime/aurae-cri/pkg/netcni"
)

func TestArgsNICsAndShares(t *testing.T) {
	args := NewQEMU(Options{}).args(VMConfig{ID: "v", Dir: "/d", Kernel: "/k", MemMiB: 64, VCPUs: 1,
		NICs:   []NIC{{Tap: "tap0", MAC: "4a:1b:2c:3d:4e:5f"}},
		Shares: []Share{{Tag: "aurae-shared", Path: "/s,1"}, {Tag: "ro", Path: "/r", ReadOnly: true}}}, AccelTCG)
	line := strings.Join(args, " ")
	for _, want := range []string{
		"-netdev tap,id=net0,fd=5,vhost=off -device virtio-net-pci,netdev=net0,mac=4a:1b:2c:3d:4e:5f",
		"-M q35,memory-backend=mem ",
		"-object memory-backend-memfd,id=mem,size=64M,share=on ",
		"-chardev socket,id=fs0,path=/proc/self/fd/3/fs0.sock -device vhost-user-fs-pci,queue-size=1024,chardev=fs0,tag=aurae-shared",
		"-chardev socket,id=fs1,path=/proc/self/fd/3/fs1.sock -device vhost-user-fs-pci,queue-size=1024,chardev=fs1,tag=ro",
	} {
		if !strings.Contains(line, want) {
			t.Errorf("command line lacks %q:\n%s", want, line)
		}
	}
}

// TestStartInNetns starts a process in a pinned network namespace: it sees
// only that namespace's devices, and the caller's thread is back home.
func TestStartInNetns(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (a pinned network namespace)")
	}
	// Pinned under the test's own dir: `ip netns add` would leave
	// /run/netns mounted on itself.
	nsPath := filepath.Join(t.TempDir(), "netns")
	if err := netcni.CreateNetNS(nsPath); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := netcni.RemoveNetNS(nsPath); err != nil {
			t.Error(err)
		}
	})
	before, err := os.Readlink("/proc/thread-self/ns/net")
	if err != nil {
		t.Skip(err)
	}
	// CreateNetNS's thread stays in the new namespace until it exits, which
	// the runtime does a moment after its goroutine ended.
	deadline := time.Now().Add(5 * time.Second)
	for len(foreignThreads(before)) > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	cmd := exec.Command("cat", "/proc/net/dev")
	var out strings.Builder
	cmd.Stdout = &out
	if err := startIn(nsPath, cmd); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	if strings.Count(out.String(), ":") != 1 || !strings.Contains(out.String(), "lo:") {
		t.Fatalf("devices in the namespace:\n%s", out.String())
	}
	// Every thread of the process is back (or was never) in its namespace.
	if left := foreignThreads(before); len(left) > 0 {
		t.Fatalf("threads %v are not in the process's namespace %s", left, before)
	}
}

// foreignThreads lists the threads of this process outside network
// namespace ns.
func foreignThreads(ns string) []string {
	var out []string
	tasks, _ := os.ReadDir("/proc/self/task")
	for _, task := range tasks {
		if got, err := os.Readlink("/proc/self/task/" + task.Name() + "/ns/net"); err == nil && got != ns {
			out = append(out, task.Name()+":"+got)
		}
	}
	return out
}
