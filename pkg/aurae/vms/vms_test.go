package vms

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	discoveryv0 "github.com/aurae-runtime/aurae-cri/api/discovery/v0"
	vmsv0 "github.com/aurae-runtime/aurae-cri/api/vms/v0"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/cgroup"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/client"
	"github.com/aurae-runtime/aurae-cri/pkg/hypervisor"
)

func TestMain(m *testing.M) {
	if _, ok := os.LookupEnv(hypervisor.VirtiofsdEnv); ok {
		hypervisor.RunVirtiofsd()
	}
	if dir := os.Getenv("AURAE_VMS_TEST_OWNER"); dir != "" {
		ownerMain(dir)
		return
	}
	os.Exit(m.Run())
}

// ownerMain plays an auraed that starts a VM and is then killed with
// SIGKILL by TestAdoptAfterKill.
func ownerMain(dir string) {
	ctx := context.Background()
	s, err := NewService(ctx, Config{StateDir: dir, Initramfs: os.Getenv("AURAE_VMS_TEST_INITRAMFS"), BootTimeout: 90 * time.Second})
	if err == nil {
		_, err = s.Create(ctx, &vmsv0.VmServiceCreateRequest{Machine: machine("adoptee", os.Getenv("AURAE_VMS_TEST_KERNEL"))})
	}
	if err == nil {
		_, err = s.Start(ctx, &vmsv0.VmServiceStartRequest{VmId: "adoptee"})
	}
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	fmt.Println("started")
	select {}
}

func machine(id, kernel string) *vmsv0.VirtualMachine {
	return &vmsv0.VirtualMachine{Id: id, VcpuCount: 1, MemSizeMb: 256, KernelImgPath: kernel}
}

func code(err error) codes.Code { return status.Code(err) }

func vmState(t *testing.T, s *Service, id string) *vmsv0.VmSummary {
	t.Helper()
	resp, err := s.List(context.Background(), &vmsv0.VmServiceListRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range resp.GetMachines() {
		if m.GetId() == id {
			return m
		}
	}
	return nil
}

// TestBadRequests: refused requests get clear codes and leave nothing.
func TestBadRequests(t *testing.T) {
	dir := t.TempDir()
	s, err := NewService(context.Background(), Config{StateDir: dir, CgroupRoot: "aurae"})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = s.Close() }()
	ctx := context.Background()
	kernel := filepath.Join(t.TempDir(), "vmlinux")
	if err := os.WriteFile(kernel, []byte("not really a kernel"), 0o644); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(t.TempDir(), "missing-vmlinux")
	for _, tc := range []struct {
		name string
		m    *vmsv0.VirtualMachine
		code codes.Code
		msg  string
	}{
		{"no machine", nil, codes.InvalidArgument, "machine is missing"},
		{"empty id", machine("", kernel), codes.InvalidArgument, "id is empty"},
		{"unsafe id", machine("a/../x", kernel), codes.InvalidArgument, "not allowed"},
		{"dot id", machine(".accel", kernel), codes.InvalidArgument, "starts with '.'"},
		{"missing kernel", machine("vm-a", missing), codes.InvalidArgument, missing},
		{"relative kernel", machine("vm-a", "vmlinux"), codes.InvalidArgument, "not absolute"},
		{"kernel is a dir", machine("vm-a", t.TempDir()), codes.InvalidArgument, "is a directory"},
		{"0 vcpus", func() *vmsv0.VirtualMachine { m := machine("vm-a", kernel); m.VcpuCount = 0; return m }(), codes.InvalidArgument, "vcpu_count 0"},
		{"too many vcpus", func() *vmsv0.VirtualMachine { m := machine("vm-a", kernel); m.VcpuCount = 4096; return m }(), codes.InvalidArgument, "vcpu_count 4096"},
		{"too little memory", func() *vmsv0.VirtualMachine { m := machine("vm-a", kernel); m.MemSizeMb = 16; return m }(), codes.InvalidArgument, "mem_size_mb 16"},
		{"too much memory", func() *vmsv0.VirtualMachine { m := machine("vm-a", kernel); m.MemSizeMb = 1 << 30; return m }(), codes.InvalidArgument, "mem_size_mb"},
		{"cgroup outside auraed's root", func() *vmsv0.VirtualMachine { m := machine("vm-a", kernel); m.CgroupPath = "system.slice"; return m }(), codes.InvalidArgument, "not a cgroup below"},
		{"cgroup that climbs out", func() *vmsv0.VirtualMachine { m := machine("vm-a", kernel); m.CgroupPath = "aurae/../x"; return m }(), codes.InvalidArgument, "not a cgroup below"},
		{"missing cgroup", func() *vmsv0.VirtualMachine {
			m := machine("vm-a", kernel)
			m.CgroupPath = "aurae/no-such-pod"
			return m
		}(), codes.InvalidArgument, "does not exist"},
		{"missing root drive", func() *vmsv0.VirtualMachine {
			m := machine("vm-a", kernel)
			m.RootDrive = &vmsv0.RootDrive{HostPath: missing + ".img"}
			return m
		}(), codes.InvalidArgument, missing + ".img"},
		{"missing drive mount", func() *vmsv0.VirtualMachine {
			m := machine("vm-a", kernel)
			m.DriveMounts = []*vmsv0.DriveMount{{HostPath: missing + ".data", VmPath: "/data", FsType: "ext4"}}
			return m
		}(), codes.InvalidArgument, missing + ".data"},
		{"relative vm path", func() *vmsv0.VirtualMachine {
			m := machine("vm-a", kernel)
			m.DriveMounts = []*vmsv0.DriveMount{{HostPath: kernel, VmPath: "data"}}
			return m
		}(), codes.InvalidArgument, "vm_path"},
		{"control character in kernel args", func() *vmsv0.VirtualMachine {
			m := machine("vm-a", kernel)
			m.KernelArgs = []string{"a\nb"}
			return m
		}(), codes.InvalidArgument, "control characters"},
		{"id too long", machine(strings.Repeat("x", 65), kernel), codes.InvalidArgument, "longer than 64"},
	} {
		_, err := s.Create(ctx, &vmsv0.VmServiceCreateRequest{Machine: tc.m})
		if code(err) != tc.code || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%s: got %v, want %s mentioning %q", tc.name, err, tc.code, tc.msg)
		}
	}
	// Allocate is Create: a duplicate id is refused, the first VM stays.
	if _, err := s.Allocate(ctx, &vmsv0.VmServiceCreateRequest{Machine: machine("vm-a", kernel)}); err != nil {
		t.Fatal(err)
	}
	dup := machine("vm-a", kernel)
	dup.VcpuCount = 1
	if _, err := s.Create(ctx, &vmsv0.VmServiceCreateRequest{Machine: dup}); code(err) != codes.AlreadyExists {
		t.Errorf("duplicate id: %v, want AlreadyExists", err)
	}
	if m := vmState(t, s, "vm-a"); m.GetState() != vmsv0.VmState_VM_STATE_CREATED || m.GetHypervisorPid() != 0 {
		t.Errorf("vm-a: %v", m)
	}
	// Unknown ids: Start is NotFound, Stop and Free succeed.
	if _, err := s.Start(ctx, &vmsv0.VmServiceStartRequest{VmId: "nope"}); code(err) != codes.NotFound {
		t.Errorf("start unknown: %v", err)
	}
	if _, err := s.Stop(ctx, &vmsv0.VmServiceStopRequest{VmId: "nope"}); err != nil {
		t.Errorf("stop unknown: %v", err)
	}
	if _, err := s.Free(ctx, &vmsv0.VmServiceFreeRequest{VmId: "nope"}); err != nil {
		t.Errorf("free unknown: %v", err)
	}
	if _, err := s.Free(ctx, &vmsv0.VmServiceFreeRequest{VmId: "vm-a"}); err != nil {
		t.Fatal(err)
	}
	// Nothing left: no VM dir, no socket, no record.
	entries, _ := os.ReadDir(filepath.Join(dir, "vms"))
	for _, e := range entries {
		t.Errorf("left in vms/: %s", e.Name())
	}
	if resp, _ := s.List(ctx, &vmsv0.VmServiceListRequest{}); len(resp.GetMachines()) != 0 {
		t.Errorf("listed: %v", resp.GetMachines())
	}
}

// bootCheck checks a running VM: the guest image's auraed answers Discover
// on auraed_address; the busybox guest printed its marker and QMP says
// running.
func bootCheck(t *testing.T, s *Service, g guest, id, addr string) {
	t.Helper()
	v, err := s.lookup(id)
	if err != nil {
		t.Fatal(err)
	}
	p := v.running()
	if p == nil || !p.Alive() {
		t.Fatalf("vm %s: no hypervisor running", id)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	st, err := s.hv.Status(ctx, p)
	if err != nil || st != "running" {
		t.Fatalf("QMP status = %q, %v", st, err)
	}
	t.Logf("hypervisor pid %d, RSS %d MiB", p.Pid, p.RSSKiB()>>10)
	if g.image {
		t0 := time.Now()
		// The guest's auraed answers once its kernel booted, seconds
		// after the first console output under a loaded TCG: redial.
		var c *client.Client
		for {
			c, err = client.Dial(ctx, addr)
			if err == nil || ctx.Err() != nil {
				break
			}
			time.Sleep(500 * time.Millisecond)
		}
		if err != nil {
			t.Fatalf("dial the guest auraed at %s: %v", addr, err)
		}
		defer func() { _ = c.Close() }()
		resp, err := c.Discovery.Discover(ctx, &discoveryv0.DiscoverRequest{})
		if err != nil || !resp.GetHealthy() {
			t.Fatalf("guest Discover = %v, %v", resp, err)
		}
		t.Logf("guest auraed %s answered Discover %s after Start returned", resp.GetVersion(), time.Since(t0).Round(time.Millisecond))
		return
	}
	console := hypervisor.ConsoleLog(v.dir)
	for {
		b, _ := os.ReadFile(console)
		if strings.Contains(string(b), guestMarker) {
			return
		}
		if ctx.Err() != nil {
			t.Fatalf("the guest's init did not print its marker; console:\n%s", b)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestLifecycle(t *testing.T) {
	g := needGuest(t)
	dir := t.TempDir()
	noHypervisorLeft(t, dir)
	s := newTestService(t, dir, g)
	defer func() { _ = s.Close() }()
	ctx := context.Background()
	// The VM runs in a pod's cgroup, as a VM pod's does.
	root := fmt.Sprintf("aurae-test-vms-%d", os.Getpid())
	s.cfg.CgroupRoot = root
	podCg, err := cgroup.New(root+"/pod", cgroup.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = podCg.Delete()
		if rc, err := cgroup.Load(root); err == nil {
			_ = rc.Delete()
		}
	})
	lm := machine("life", g.kernel)
	lm.CgroupPath = root + "/pod"
	if _, err := s.Create(ctx, &vmsv0.VmServiceCreateRequest{Machine: lm}); err != nil {
		t.Fatal(err)
	}
	if m := vmState(t, s, "life"); m.GetState() != vmsv0.VmState_VM_STATE_CREATED {
		t.Fatalf("after create: %v", m)
	}
	t0 := time.Now()
	resp, err := s.Start(ctx, &vmsv0.VmServiceStartRequest{VmId: "life"})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("Start returned after %s (first console output)", time.Since(t0).Round(time.Millisecond))
	want := "unix://" + filepath.Join(dir, "vms", "life", "aurae.sock")
	if resp.GetAuraedAddress() != want {
		t.Errorf("auraed_address = %q, want %q", resp.GetAuraedAddress(), want)
	}
	bootCheck(t, s, g, "life", resp.GetAuraedAddress())
	t.Logf("guest booted %s after Start was called", time.Since(t0).Round(time.Millisecond))
	m := vmState(t, s, "life")
	if m.GetState() != vmsv0.VmState_VM_STATE_RUNNING || m.GetHypervisorPid() == 0 || m.GetAccelerator() == "" {
		t.Fatalf("after start: %v", m)
	}
	if m.GetAccelerator() == "tcg" && m.GetWarning() == "" {
		t.Errorf("TCG without a warning: %v", m)
	}
	t.Logf("accelerator %s; warning: %s", m.GetAccelerator(), m.GetWarning())
	pid := int(m.GetHypervisorPid())
	if cg, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid)); !strings.Contains(string(cg), root+"/pod/.vm") {
		t.Errorf("qemu is not in the pod's cgroup: %s", cg)
	}
	leaf, err := cgroup.Load(root + "/pod/.vm")
	if err != nil {
		t.Fatal(err)
	}
	if procs, _ := leaf.Procs(); !slices.Contains(procs, pid) {
		t.Errorf("qemu %d not among the .vm cgroup's processes %v", pid, procs)
	}
	limitFile := cgroup.ControllerFile(root+"/pod/.vm", "memory", "memory.limit_in_bytes")
	if cgroup.Unified() {
		limitFile = cgroup.ControllerFile(root+"/pod/.vm", "memory", "memory.max")
	}
	if b, _ := os.ReadFile(limitFile); strings.TrimSpace(string(b)) != strconv.Itoa(int(lm.GetMemSizeMb()+hypervisorOverheadMiB)<<20) {
		t.Errorf("memory limit of the .vm cgroup: %q", b)
	}
	for _, f := range []string{"config.json", "qmp.sock", "aurae.sock", "console.log", "hypervisor.pid"} {
		if _, err := os.Stat(filepath.Join(dir, "vms", "life", f)); err != nil {
			t.Errorf("vm dir: %v", err)
		}
	}
	// Start again: the same address, the same VM.
	if r2, err := s.Start(ctx, &vmsv0.VmServiceStartRequest{VmId: "life"}); err != nil || r2.GetAuraedAddress() != want {
		t.Errorf("second start = %v, %v", r2, err)
	}
	if _, err := s.Create(ctx, &vmsv0.VmServiceCreateRequest{Machine: machine("life", g.kernel)}); code(err) != codes.AlreadyExists {
		t.Errorf("create of a running id: %v", err)
	}

	t0 = time.Now()
	if _, err := s.Stop(ctx, &vmsv0.VmServiceStopRequest{VmId: "life"}); err != nil {
		t.Fatal(err)
	}
	t.Logf("Stop took %s", time.Since(t0).Round(time.Millisecond))
	if pids := hypervisorsOf(dir); len(pids) != 0 {
		t.Fatalf("qemu still runs after Stop: %v (was %d)", pids, pid)
	}
	if m := vmState(t, s, "life"); m.GetState() != vmsv0.VmState_VM_STATE_STOPPED || m.GetHypervisorPid() != 0 {
		t.Errorf("after stop: %v", m)
	}
	if _, err := s.Stop(ctx, &vmsv0.VmServiceStopRequest{VmId: "life"}); err != nil {
		t.Errorf("second stop: %v", err)
	}
	if _, err := s.Free(ctx, &vmsv0.VmServiceFreeRequest{VmId: "life"}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "vms", "life")); !os.IsNotExist(err) {
		t.Errorf("vm dir after free: %v", err)
	}
	if cgroup.Exists(root + "/pod/.vm") {
		t.Error("the .vm cgroup is left after free")
	}
	if vmState(t, s, "life") != nil {
		t.Error("listed after free")
	}
}

// TestAdoptAfterKill: an owner process starts a VM and is killed with
// SIGKILL; the VM keeps running; a new service on the same state dir adopts
// it, restarts it after a stop, stops and frees it.
func TestAdoptAfterKill(t *testing.T) {
	g := needGuest(t)
	dir := t.TempDir()
	noHypervisorLeft(t, dir)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "AURAE_VMS_TEST_OWNER="+dir, "AURAE_VMS_TEST_KERNEL="+g.kernel, "AURAE_VMS_TEST_INITRAMFS="+g.initramfs)
	cmd.Stderr = testWriter{t}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if l := sc.Text(); l == "started" || strings.HasPrefix(l, "error:") {
				line <- l
				return
			}
		}
		line <- "owner exited"
	}()
	select {
	case l := <-line:
		if l != "started" {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			t.Fatalf("owner: %s", l)
		}
	case <-time.After(4 * time.Minute):
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Fatal("owner did not start the VM in time")
	}
	_ = cmd.Process.Kill() // SIGKILL: no Close, no Stop
	_ = cmd.Wait()
	pids := hypervisorsOf(dir)
	if len(pids) != 1 {
		t.Fatalf("qemu after the owner's SIGKILL: %v, want one", pids)
	}

	s := newTestService(t, dir, g)
	defer func() { _ = s.Close() }()
	ctx := context.Background()
	m := vmState(t, s, "adoptee")
	if m.GetState() != vmsv0.VmState_VM_STATE_RUNNING || int(m.GetHypervisorPid()) != pids[0] {
		t.Fatalf("after restart: %v, want running with pid %d", m, pids[0])
	}
	bootCheck(t, s, g, "adoptee", m.GetAuraedAddress())
	if _, err := s.Stop(ctx, &vmsv0.VmServiceStopRequest{VmId: "adoptee"}); err != nil {
		t.Fatal(err)
	}
	if left := hypervisorsOf(dir); len(left) != 0 {
		t.Fatalf("qemu still runs after Stop: %v", left)
	}
	if m := vmState(t, s, "adoptee"); m.GetState() != vmsv0.VmState_VM_STATE_STOPPED {
		t.Fatalf("after stop: %v", m)
	}

	// A stopped VM survives a restart as stopped, and boots again.
	_ = s.Close()
	s = newTestService(t, dir, g)
	defer func() { _ = s.Close() }()
	if m := vmState(t, s, "adoptee"); m.GetState() != vmsv0.VmState_VM_STATE_STOPPED {
		t.Fatalf("after a second restart: %v", m)
	}
	resp, err := s.Start(ctx, &vmsv0.VmServiceStartRequest{VmId: "adoptee"})
	if err != nil {
		t.Fatal(err)
	}
	bootCheck(t, s, g, "adoptee", resp.GetAuraedAddress())
	// Free stops it first.
	if _, err := s.Free(ctx, &vmsv0.VmServiceFreeRequest{VmId: "adoptee"}); err != nil {
		t.Fatal(err)
	}
	if left := hypervisorsOf(dir); len(left) != 0 {
		t.Fatalf("qemu still runs after Free: %v", left)
	}
	if _, err := os.Stat(filepath.Join(dir, "vms", "adoptee")); !os.IsNotExist(err) {
		t.Errorf("vm dir after free: %v", err)
	}
}

// TestExitWatched: a guest that powers itself off (here: QEMU killed from
// outside) is listed stopped without any call.
func TestExitWatched(t *testing.T) {
	g := needGuest(t)
	dir := t.TempDir()
	noHypervisorLeft(t, dir)
	s := newTestService(t, dir, g)
	defer func() { _ = s.Close() }()
	ctx := context.Background()
	if _, err := s.Create(ctx, &vmsv0.VmServiceCreateRequest{Machine: machine("watched", g.kernel)}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Start(ctx, &vmsv0.VmServiceStartRequest{VmId: "watched"}); err != nil {
		t.Fatal(err)
	}
	v, _ := s.lookup("watched")
	p := v.running()
	if err := s.hv.Kill(ctx, p); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for vmState(t, s, "watched").GetState() != vmsv0.VmState_VM_STATE_STOPPED {
		if time.Now().After(deadline) {
			t.Fatalf("still listed %v after its qemu died", vmState(t, s, "watched"))
		}
		time.Sleep(50 * time.Millisecond)
	}
	if _, err := s.Free(ctx, &vmsv0.VmServiceFreeRequest{VmId: "watched"}); err != nil {
		t.Fatal(err)
	}
}
