package guest_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	cellsv0 "github.com/aurae-runtime/aurae-cri/api/cells/v0"
	discoveryv0 "github.com/aurae-runtime/aurae-cri/api/discovery/v0"
	observev0 "github.com/aurae-runtime/aurae-cri/api/observe/v0"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/client"
)

// bootTimeout bounds QEMU start → Discover answered, under TCG on a busy
// 2-core machine; one retry follows a timeout (issue 4: boots under TCG
// may hang early, rarely).
const bootTimeout = 60 * time.Second

// guestMemory is the guest's RAM (MiB): enough for auraed, crun and a
// container, or AURAE_VM_TEST_MEMORY.
func guestMemory() string {
	if m := os.Getenv("AURAE_VM_TEST_MEMORY"); m != "" {
		return m
	}
	return "256"
}

// vm is one QEMU running the guest image.
type vm struct {
	t       *testing.T
	dir     string
	cmd     *exec.Cmd
	exited  chan struct{}
	waitErr error
	sock    string
	qmp     string
	console string
	started time.Time
}

func imageDir(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("qemu-system-x86_64 not installed (make vm-deps)")
	}
	dir := os.Getenv("AURAE_VM_IMAGE_DIR")
	if dir == "" {
		dir = "/var/lib/aurae/vm"
	}
	for _, f := range []string{"vmlinux", "initramfs.cpio.gz"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Skipf("guest image missing (%v): run make vm-image (or set AURAE_VM_IMAGE_DIR)", err)
		}
	}
	return dir
}

func startVM(t *testing.T, image string, extraArgs string) *vm {
	t.Helper()
	dir, err := os.MkdirTemp("", "aurae-vm-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	v := &vm{
		t:       t,
		dir:     dir,
		sock:    filepath.Join(dir, "aurae.sock"),
		qmp:     filepath.Join(dir, "qmp.sock"),
		console: filepath.Join(dir, "console.log"),
		exited:  make(chan struct{}),
	}
	args := []string{
		"-M", "q35", "-accel", "tcg,tb-size=32", "-cpu", "max", "-m", guestMemory(), "-smp", "1",
		"-nographic", "-nodefaults", "-no-reboot",
		"-serial", "file:" + v.console,
		"-kernel", filepath.Join(image, "vmlinux"),
		"-initrd", filepath.Join(image, "initramfs.cpio.gz"),
		"-append", strings.TrimSpace("console=ttyS0 panic=-1 quiet aurae.hostname=guest-test " + extraArgs),
		"-device", "virtio-serial-pci,id=vser0",
		"-chardev", "socket,id=aurae0,path=" + v.sock + ",server=on,wait=off",
		"-device", "virtserialport,bus=vser0.0,chardev=aurae0,name=aurae.0",
		"-qmp", "unix:" + v.qmp + ",server=on,wait=off",
	}
	v.cmd = exec.Command("qemu-system-x86_64", args...)
	v.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	v.started = time.Now()
	if err := v.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { v.waitErr = v.cmd.Wait(); close(v.exited) }()
	t.Cleanup(v.kill)
	return v
}

func (v *vm) kill() {
	select {
	case <-v.exited:
		return
	default:
	}
	_ = v.cmd.Process.Kill()
	<-v.exited
}

func (v *vm) consoleTail() string {
	b, _ := os.ReadFile(v.console)
	s := string(b)
	if len(s) > 6000 {
		s = s[len(s)-6000:]
	}
	return s
}

// dial waits for QEMU's socket, then for the guest auraed to answer Discover.
func (v *vm) dial(ctx context.Context) (*client.Client, time.Duration, error) {
	for {
		if _, err := os.Stat(v.sock); err == nil {
			break
		}
		select {
		case <-v.exited:
			return nil, 0, fmt.Errorf("qemu exited: %w", v.waitErr)
		case <-ctx.Done():
			return nil, 0, ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
	for {
		c, err := client.Dial(ctx, "unix://"+v.sock)
		if err == nil {
			_, err = c.Discovery.Discover(ctx, &discoveryv0.DiscoverRequest{})
			if err == nil {
				return c, time.Since(v.started), nil
			}
			_ = c.Close()
		}
		select {
		case <-v.exited:
			return nil, 0, fmt.Errorf("qemu exited: %w", v.waitErr)
		case <-ctx.Done():
			return nil, 0, fmt.Errorf("%w (last: %w)", ctx.Err(), err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// boot starts a VM and connects to its auraed, with one retry.
func boot(t *testing.T, image, extraArgs string) (*vm, *client.Client, time.Duration) {
	t.Helper()
	for attempt := 1; ; attempt++ {
		v := startVM(t, image, extraArgs)
		ctx, cancel := context.WithTimeout(context.Background(), bootTimeout)
		c, took, err := v.dial(ctx)
		cancel()
		if err == nil {
			t.Cleanup(func() { _ = c.Close() })
			return v, c, took
		}
		t.Logf("boot attempt %d: %v\nconsole:\n%s", attempt, err, v.consoleTail())
		v.kill()
		if attempt == 2 {
			t.Fatal("the guest auraed did not answer Discover")
		}
	}
}

func (v *vm) rssKiB() int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", v.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			n, _ := strconv.Atoi(f[1])
			return n
		}
	}
	return 0
}

// waitExit waits for QEMU to end by itself and checks it ended well.
func (v *vm) waitExit(t *testing.T, d time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	select {
	case <-v.exited:
	case <-time.After(d):
		t.Fatalf("qemu still runs %v after power off was asked\nconsole:\n%s", d, v.consoleTail())
	}
	if v.waitErr != nil {
		t.Fatalf("qemu: %v\nconsole:\n%s", v.waitErr, v.consoleTail())
	}
	return time.Since(start)
}

// run starts command in a new cell of the guest and returns its stdout.
func run(ctx context.Context, t *testing.T, c *client.Client, cell, command string) string {
	t.Helper()
	if _, err := c.Cells.Allocate(ctx, &cellsv0.CellServiceAllocateRequest{Cell: &cellsv0.Cell{Name: cell}}); err != nil {
		t.Fatalf("allocate %s: %v", cell, err)
	}
	started, err := c.Cells.Start(ctx, &cellsv0.CellServiceStartRequest{
		CellName:   proto.String(cell),
		Executable: &cellsv0.Executable{Name: "x", Command: command},
	})
	if err != nil {
		t.Fatalf("start %q: %v", command, err)
	}
	return output(ctx, t, c, started.GetPid())
}

// output is a process's stdout, until it ends.
func output(ctx context.Context, t *testing.T, c *client.Client, pid int32) string {
	t.Helper()
	stream, err := c.Observe.GetSubProcessStream(ctx, &observev0.GetSubProcessStreamRequest{
		ChannelType: observev0.LogChannelType_LOG_CHANNEL_TYPE_STDOUT,
		ProcessId:   int64(pid),
	})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for {
		item, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("output of pid %d: %v", pid, err)
		}
		out = append(out, item.GetLine())
	}
	return strings.TrimSpace(strings.Join(out, "\n"))
}

func TestBootUnderQEMU(t *testing.T) {
	image := imageDir(t)
	v, c, took := boot(t, image, "")
	t.Logf("boot to Discover: %v; QEMU RSS then: %d MiB", took.Round(time.Millisecond), v.rssKiB()/1024)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	release := run(ctx, t, c, "uname", "uname -r")
	want, err := os.ReadFile(filepath.Join(image, "vmlinux.release"))
	if err == nil && release != strings.TrimSpace(string(want)) {
		t.Fatalf("uname -r in the guest = %q, want %q", release, strings.TrimSpace(string(want)))
	}
	var host syscall.Utsname
	_ = syscall.Uname(&host)
	t.Logf("guest uname -r: %q (host: %q)", release, utsString(host.Release[:]))
	if hn := run(ctx, t, c, "hostname", "hostname"); hn != "guest-test" {
		t.Errorf("guest hostname = %q, want guest-test (aurae.hostname=)", hn)
	}
	// cgroup v2 limits (the guest mounts cgroup2 unified).
	if _, err := c.Cells.Allocate(ctx, &cellsv0.CellServiceAllocateRequest{Cell: &cellsv0.Cell{
		Name:   "limited",
		Memory: &cellsv0.MemoryController{Max: proto.Int64(64 << 20), High: proto.Int64(48 << 20)},
		Cpu:    &cellsv0.CpuController{Weight: proto.Uint64(50), Max: proto.Int64(50000)},
	}}); err != nil {
		t.Fatalf("allocate a cell with limits: %v", err)
	}
	limits, err := c.Cells.Start(ctx, &cellsv0.CellServiceStartRequest{
		CellName: proto.String("limited"),
		Executable: &cellsv0.Executable{Name: "cat", Command: `sh -c 'd=/sys/fs/cgroup$(cut -d: -f3 /proc/self/cgroup);` +
			` cat $d/memory.max $d/memory.high $d/cpu.weight $d/cpu.max'`},
	})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := output(ctx, t, c, limits.GetPid()), "67108864\n50331648\n50\n50000 100000"; got != want {
		t.Errorf("cgroup v2 limits in the guest: %q, want %q", got, want)
	}

	// The guest's OCI runtime (crun) can pivot_root into a container: the
	// guest's root is not rootfs.
	if out := run(ctx, t, c, "crun", "sh -c '"+crunScript+"'"); !strings.HasSuffix(out, release) {
		t.Errorf("uname -r in a crun container in the guest: %q, want %q", out, release)
	}
	t.Logf("QEMU RSS after boot, four cells and a crun container: %d MiB (guest -m %s)", v.rssKiB()/1024, guestMemory())

	// The host disconnects and reconnects: the guest re-opens the port.
	_ = c.Close()
	c2, err := client.Dial(ctx, "unix://"+v.sock)
	if err != nil {
		t.Fatalf("reconnect: %v", err)
	}
	defer func() { _ = c2.Close() }()
	if _, err := c2.Discovery.Discover(ctx, &discoveryv0.DiscoverRequest{}); err != nil {
		t.Fatalf("Discover after a reconnect: %v", err)
	}

	// QMP system_powerdown: the ACPI power button.
	if err := qmp(v.qmp, "system_powerdown"); err != nil {
		t.Fatal(err)
	}
	t.Logf("system_powerdown → QEMU exit: %v", v.waitExit(t, 30*time.Second).Round(time.Millisecond))
	if !strings.Contains(v.consoleTail(), "power button") {
		t.Errorf("console does not show the power button shutdown:\n%s", v.consoleTail())
	}
}

func TestRestartAndPowerOffBySIGTERM(t *testing.T) {
	image := imageDir(t)
	v, c, _ := boot(t, image, "")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// The serving auraed dies (its child kills it): PID 1 restarts it, and
	// the host's client, whose connection predates the new session, is told
	// to dial again (GOAWAY) and gets its answers.
	if _, err := c.Cells.Allocate(ctx, &cellsv0.CellServiceAllocateRequest{Cell: &cellsv0.Cell{Name: "crash"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Cells.Start(ctx, &cellsv0.CellServiceStartRequest{
		CellName:   proto.String("crash"),
		Executable: &cellsv0.Executable{Name: "kill", Command: "sh -c 'sleep 1; kill -KILL $PPID'"},
	}); err != nil {
		t.Fatal(err)
	}
	for !strings.Contains(v.consoleTail(), "the serving auraed exited") {
		if ctx.Err() != nil {
			t.Fatalf("the serving auraed was not killed\nconsole:\n%s", v.consoleTail())
		}
		time.Sleep(20 * time.Millisecond)
	}
	killed := time.Now()
	for {
		_, err := c.Discovery.Discover(ctx, &discoveryv0.DiscoverRequest{})
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("no answer after the serving auraed was killed: %v\nconsole:\n%s", err, v.consoleTail())
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("serving auraed killed → Discover answered again: %v", time.Since(killed).Round(time.Millisecond))
	if !strings.Contains(v.consoleTail(), "sending GOAWAY") {
		t.Errorf("the guest did not send the stale client a GOAWAY:\n%s", v.consoleTail())
	}

	if _, err := c.Cells.Allocate(ctx, &cellsv0.CellServiceAllocateRequest{Cell: &cellsv0.Cell{Name: "halt"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Cells.Start(ctx, &cellsv0.CellServiceStartRequest{
		CellName:   proto.String("halt"),
		Executable: &cellsv0.Executable{Name: "kill", Command: "kill -TERM 1"},
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("kill -TERM 1 → QEMU exit: %v", v.waitExit(t, 30*time.Second).Round(time.Millisecond))
	if !strings.Contains(v.consoleTail(), "signal terminated") {
		t.Errorf("console does not show the SIGTERM shutdown:\n%s", v.consoleTail())
	}
}

// crunScript runs uname -r in a busybox container with crun's default spec.
const crunScript = `set -e; b=/run/bundle; mkdir -p $b/rootfs/bin $b/rootfs/proc $b/rootfs/dev $b/rootfs/sys;
cp /bin/busybox $b/rootfs/bin/; ln -s busybox $b/rootfs/bin/uname; cd $b; crun spec;
sed -i -e "s/\"terminal\": true/\"terminal\": false/" -e "s/\"sh\"/\"uname\", \"-r\"/" config.json;
crun run --bundle $b t1 2>&1`

// qmp runs one QMP command without arguments.
func qmp(path, command string) error {
	conn, err := net.DialTimeout("unix", path, 5*time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(conn)
	enc := json.NewEncoder(conn)
	if _, err := r.ReadBytes('\n'); err != nil { // greeting
		return fmt.Errorf("qmp greeting: %w", err)
	}
	for _, cmd := range []string{"qmp_capabilities", command} {
		if err := enc.Encode(map[string]string{"execute": cmd}); err != nil {
			return err
		}
		for {
			line, err := r.ReadBytes('\n')
			if err != nil {
				return fmt.Errorf("qmp %s: %w", cmd, err)
			}
			var m map[string]json.RawMessage
			if err := json.Unmarshal(line, &m); err != nil {
				return fmt.Errorf("qmp %s: %w", cmd, err)
			}
			if e, ok := m["error"]; ok {
				return fmt.Errorf("qmp %s: %s", cmd, e)
			}
			if _, ok := m["return"]; ok {
				break
			}
		}
	}
	return nil
}

func utsString(b []int8) string {
	var s []byte
	for _, c := range b {
		if c == 0 {
			break
		}
		s = append(s, byte(c))
	}
	return string(s)
}
