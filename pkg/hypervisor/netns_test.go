package hypervisor

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

func TestArgsNICsAndShares(t *testing.T) {
	args := NewQEMU(Options{}).args(VMConfig{ID: "v", Dir: "/d", Kernel: "/k", MemMiB: 64, VCPUs: 1,
		NICs:   []NIC{{Tap: "tap0", MAC: "4a:1b:2c:3d:4e:5f"}},
		Shares: []Share{{Tag: "aurae-shared", Path: "/s,1"}, {Tag: "ro", Path: "/r", ReadOnly: true}}}, AccelTCG)
	line := strings.Join(args, " ")
	for _, want := range []string{
		"-netdev tap,id=net0,ifname=tap0,script=no,downscript=no -device virtio-net-pci,netdev=net0,mac=4a:1b:2c:3d:4e:5f",
		"-fsdev local,id=fs0,path=/s,,1,security_model=passthrough,multidevs=remap -device virtio-9p-pci,fsdev=fs0,mount_tag=aurae-shared",
		"-fsdev local,id=fs1,path=/r,security_model=passthrough,multidevs=remap,readonly=on -device virtio-9p-pci,fsdev=fs1,mount_tag=ro",
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
		t.Skip("needs root (ip netns add)")
	}
	name := "aurae-hv-test"
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Skipf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	before, err := os.Readlink("/proc/thread-self/ns/net")
	if err != nil {
		t.Skip(err)
	}
	cmd := exec.Command("cat", "/proc/net/dev")
	var out strings.Builder
	cmd.Stdout = &out
	if err := startIn("/run/netns/"+name, cmd); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	if strings.Count(out.String(), ":") != 1 || !strings.Contains(out.String(), "lo:") {
		t.Fatalf("devices in the namespace:\n%s", out.String())
	}
	// Every thread of the process is back (or was never) in its namespace.
	tasks, _ := os.ReadDir("/proc/self/task")
	for _, task := range tasks {
		if ns, err := os.Readlink("/proc/self/task/" + task.Name() + "/ns/net"); err == nil && ns != before {
			t.Fatalf("thread %s is in %s, the process in %s", task.Name(), ns, before)
		}
	}
}
