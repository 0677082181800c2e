package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	vmsv0 "github.com/aurae-runtime/aurae-cri/api/vms/v0"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/client"
	"github.com/aurae-runtime/aurae-cri/test/testimage"
)

// vmBoot is how the VM of a VM pod was started ("cold" or "template") and
// why not from a template, as the embedded auraed's VmService says.
func vmBoot(t testing.TB, c *CRI, podID string) (string, string) {
	t.Helper()
	ac, err := client.Dial(t.Context(), "unix://"+c.auraedSocket(nil))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = ac.Close() }()
	resp, err := ac.Vms.List(t.Context(), &vmsv0.VmServiceListRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range resp.GetMachines() {
		if m.GetId() == "pod-"+podID[:16] {
			return m.GetBoot(), m.GetBootNote()
		}
	}
	t.Fatalf("no vm of pod %s", podID)
	return "", ""
}

// templatesDir is the embedded auraed's VM templates dir.
func templatesDir(c *CRI) string { return filepath.Join(c.auraedStateDir(nil), "vm-templates") }

// TestCRIVMPodFromTemplate starts VM pods from a VM template (made by the
// first one) and checks what a clone must not inherit from its template
// (checkClones).
func TestCRIVMPodFromTemplate(t *testing.T) {
	requireVMImage(t)
	c := startCRI(t)
	image, vol := cloneWorkload(t, c)
	var clones []clone
	for i := range 3 {
		cl := runClonePod(t, c, fmt.Sprintf("tpl%d", i), image, vol)
		if boot, note := vmBoot(t, c, cl.pod); boot != "template" {
			t.Fatalf("vm pod %d: its VM booted %q, not from a template: %s", i, boot, note)
		}
		clones = append(clones, cl)
	}
	checkClones(t, c, clones, vol)
}

// TestCRIVMPodFromPool starts VM pods with a pool of one VM: the first pod
// restores a clone, then each next one takes the pooled VM made
// meanwhile. A pooled VM must be as fresh as a clone (checkClones), its
// QEMU must be in the pod's cgroup, and one that a kill -9 of aurae-cri
// left running is gone after the restart, while the pods' VMs are
// adopted; no pooled VM is left once aurae-cri stops.
func TestCRIVMPodFromPool(t *testing.T) {
	requireVMImage(t)
	c := startCRI(t, "--vm-pool-size=1")
	image, vol := cloneWorkload(t, c)
	poolReady := func(n int) {
		t.Helper()
		if err := waitRecord(c, "vm pool: vm ready", n, 3*time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	var clones []clone
	for i := range 3 {
		if i > 0 {
			poolReady(i)
		}
		cl := runClonePod(t, c, fmt.Sprintf("pool%d", i), image, vol)
		want := "pool"
		if i == 0 {
			want = "template"
		}
		if boot, note := vmBoot(t, c, cl.pod); boot != want {
			t.Fatalf("vm pod %d: its VM booted %q (%s), want %q", i, boot, note, want)
		}
		// The hypervisor is in the pod's cgroup, whichever way it started.
		cg := podCgroupPath(t, c, cl.pod)
		procs, err := os.ReadFile(filepath.Join("/sys/fs/cgroup/memory", cg, ".vm", "cgroup.procs"))
		if err != nil {
			t.Fatal(err)
		}
		qemu := 0
		for _, f := range strings.Fields(string(procs)) {
			if pid, _ := strconv.Atoi(f); isQEMU(pid) {
				qemu++
			}
		}
		if qemu != 1 {
			t.Errorf("vm pod %d: %d QEMU in its cgroup's .vm leaf (%q), want 1", i, qemu, procs)
		}
		clones = append(clones, cl)
	}
	checkClones(t, c, clones, vol)
	// The guest's pods (a shared PID namespace) got their holder from the
	// guest's aurae-holder, beside its auraed (/init).
	b, err := os.ReadFile(filepath.Join(c.auraedStateDir(nil), "vms", "pod-"+clones[1].pod[:16], "console.log"))
	if err != nil || !strings.Contains(string(b), `"holder":"/aurae-holder"`) {
		t.Errorf("the guest's pod namespace holder is not /aurae-holder (%v): %s", err, b)
	}
	for _, r := range c.Records() {
		if r["msg"] == "vm pool: vm taken" || r["msg"] == "vm pool: vm ready" {
			t.Logf("%s: %v took %v", r["msg"], r["pooled"], r["took"])
		}
	}

	// The pool's next VM, then a kill -9: it must not outlive the restart.
	poolReady(3)
	left := pooledQEMUPids(c)
	if len(left) != 1 {
		t.Fatalf("pooled vms before the kill: %v, want one", left)
	}
	c.Kill9()
	c.Restart(t)
	if isQEMU(left[0]) {
		t.Errorf("the pooled VM's QEMU (pid %d) still runs after the restart", left[0])
	}
	if ds, _ := filepath.Glob(filepath.Join(c.auraedStateDir(nil), "vms", ".pool-*")); len(ds) > 0 {
		t.Errorf("pooled vm dirs left after the restart: %v", ds)
	}
	for i, cl := range clones {
		out, _, err := c.Runtime.ExecSync(t.Context(), cl.ctr, []string{"cat", "/vol/hello"}, 30*time.Second)
		if err != nil || strings.TrimSpace(string(out)) != "from the host" {
			t.Errorf("vm pod %d after the restart: %q %v", i, out, err)
		}
	}
	// A pod after the restart: the pool is empty (not adopted), so it
	// restores a clone and the pool fills again; aurae-cri's stop kills the
	// pooled VM.
	cl := runClonePod(t, c, "after", image, vol)
	if boot, note := vmBoot(t, c, cl.pod); boot != "template" {
		t.Errorf("vm pod after the restart: booted %q (%s), want template", boot, note)
	}
	poolReady(4)
	left = pooledQEMUPids(c)
	c.removeAll(t)
	if err := c.Stop(t); err != nil {
		t.Errorf("stop aurae-cri: %v", err)
	}
	for _, pid := range left {
		if isQEMU(pid) {
			t.Errorf("pooled VM's QEMU (pid %d) still runs after aurae-cri stopped", pid)
		}
	}
	if ds, _ := filepath.Glob(filepath.Join(c.auraedStateDir(nil), "vms", ".pool-*")); len(ds) > 0 {
		t.Errorf("pooled vm dirs left after aurae-cri stopped: %v", ds)
	}
}

// isQEMU says whether pid is a running QEMU.
func isQEMU(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return err == nil && strings.Contains(string(b), "qemu-system")
}

// hypervisorPid reads the hypervisor pid file of the VM dir called name
// under the embedded auraed's state.
func hypervisorPid(c *CRI, name string) (int, error) {
	b, err := os.ReadFile(filepath.Join(c.auraedStateDir(nil), "vms", name, "hypervisor.pid"))
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// pooledQEMUPids are the QEMU pids of the pooled VMs, from their pid files.
func pooledQEMUPids(c *CRI) []int {
	var pids []int
	ds, _ := filepath.Glob(filepath.Join(c.auraedStateDir(nil), "vms", ".pool-*"))
	for _, d := range ds {
		if pid, err := hypervisorPid(c, filepath.Base(d)); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}

// waitRecord waits until aurae-cri has logged n records with message msg.
func waitRecord(c *CRI, msg string, n int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		got := 0
		for _, r := range c.Records() {
			if r["msg"] == msg {
				got++
			}
		}
		if got >= n {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d records %q within %v, want %d", got, msg, timeout, n)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// clone is a VM pod started from a template and its server container.
type clone struct{ pod, ctr, ip string }

// cloneWorkload pushes the clones' image and makes their volume.
func cloneWorkload(t *testing.T, c *CRI) (image, vol string) {
	t.Helper()
	image = c.pushBusybox(t, "e2e/busybox:vmtpl", testimage.Options{})
	vol = t.TempDir()
	if err := os.WriteFile(filepath.Join(vol, "hello"), []byte("from the host\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return image, vol
}

// runClonePod runs a VM pod with a server container mounting vol
// read-only.
func runClonePod(t *testing.T, c *CRI, name, image, vol string) clone {
	t.Helper()
	ctx := t.Context()
	pod := c.podConfig(t, name)
	podID, err := c.Runtime.RunPodSandbox(ctx, pod, "aurae-vm")
	if err != nil {
		t.Fatalf("run vm pod %s: %v", name, err)
	}
	cfg := containerConfig("srv", image, "sh", "-c", "exec nc -ll -p 8080 -e echo pong")
	cfg.Mounts = []*runtimeapi.Mount{{ContainerPath: "/vol", HostPath: vol, Readonly: true}}
	id := runContainer(t, c, podID, pod, cfg)
	waitContainerState(t, c, id, runtimeapi.ContainerState_CONTAINER_RUNNING)
	pst, err := c.Runtime.PodSandboxStatus(ctx, podID, false)
	if err != nil {
		t.Fatal(err)
	}
	return clone{pod: podID, ctr: id, ip: pst.GetStatus().GetNetwork().GetIp()}
}

// checkClones checks what a clone must not inherit from its template: the
// clock (each guest is within a few seconds of the host, though the
// template was saved earlier), the random state (clones read different
// bytes and UUIDs); and that what is hot-plugged after the restore works:
// the share (the container's rootfs and a read-only volume) and the NIC
// (the host reaches a server in each clone).
func checkClones(t *testing.T, c *CRI, clones []clone, vol string) {
	t.Helper()
	ctx := t.Context()
	// The template was saved before the first pod started; make sure
	// enough time has gone by that a clone still on its template's clock
	// would be found out.
	const skew = 3 * time.Second
	ents, err := os.ReadDir(templatesDir(c))
	if err != nil || len(ents) != 1 {
		t.Fatalf("vm templates: %v %v, want one", ents, err)
	}
	var meta struct {
		CreatedAt time.Time `json:"created_at"`
	}
	b, err := os.ReadFile(filepath.Join(templatesDir(c), ents[0].Name(), "meta.json"))
	if err != nil || json.Unmarshal(b, &meta) != nil {
		t.Fatalf("template meta: %q %v", b, err)
	}
	if wait := time.Until(meta.CreatedAt.Add(2 * skew)); wait > 0 {
		time.Sleep(wait)
	}

	seen := map[string]string{}
	for i, cl := range clones {
		before := time.Now()
		out, _, err := c.Runtime.ExecSync(ctx, cl.ctr, []string{"sh", "-c",
			"date +%s; cat /vol/hello; cat /proc/sys/kernel/random/uuid; head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; echo x > /vol/w"}, 30*time.Second)
		after := time.Now()
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		if len(lines) < 4 {
			t.Fatalf("clone %d: exec: %q %v", i, out, err)
		}
		guest, perr := strconv.ParseInt(lines[0], 10, 64)
		if perr != nil || time.Unix(guest+1, 0).Before(before.Add(-skew)) || time.Unix(guest, 0).After(after.Add(skew)) {
			t.Errorf("clone %d: guest clock %s, host's between %s and %s", i, lines[0], before.Format(time.RFC3339), after.Format(time.RFC3339))
		}
		if lines[1] != "from the host" {
			t.Errorf("clone %d: the read-only volume reads %q", i, lines[1])
		}
		if err == nil {
			t.Errorf("clone %d: writing into the read-only volume succeeded", i)
		}
		for _, v := range lines[2:4] {
			if o, dup := seen[v]; dup || len(v) < 32 {
				t.Errorf("clone %d read %q, as %s did: clones share their template's random state", i, v, o)
			}
			seen[v] = fmt.Sprintf("clone %d", i)
		}
		// The hot-plugged NIC: the host reaches the clone's server.
		var got string
		deadline := time.Now().Add(60 * time.Second)
		for time.Now().Before(deadline) && got != "pong" {
			if conn, err := net.DialTimeout("tcp", net.JoinHostPort(cl.ip, "8080"), 5*time.Second); err == nil {
				_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
				b, _ := io.ReadAll(conn)
				conn.Close()
				got = strings.TrimSpace(string(b))
			}
			if got != "pong" {
				time.Sleep(500 * time.Millisecond)
			}
		}
		if got != "pong" {
			t.Errorf("clone %d: %s:8080 from the host: %q, want pong", i, cl.ip, got)
		}
	}
	if _, err := os.Stat(filepath.Join(vol, "w")); err == nil {
		t.Error("a clone wrote into its read-only volume")
	}
	// The guest network was set by GuestService, not a shell in the guest.
	attached := 0
	for _, r := range c.Records() {
		if r["msg"] == "vm pod network attached" {
			attached++
			if r["via"] != "guest-service" {
				t.Errorf("vm pod network attached via %v, want guest-service", r["via"])
			}
		}
	}
	if attached != len(clones) {
		t.Errorf("%d vm pod networks attached, want %d", attached, len(clones))
	}
}

// TestCRIVMTemplateKilledWhileMade kills aurae-cri (and its embedded
// auraed) with SIGKILL while the first VM pod's template is being made:
// after the restart the unfinished template and its QEMU are gone, no
// template that is not whole is left, and the next VM pod starts from a
// new template.
func TestCRIVMTemplateKilledWhileMade(t *testing.T) {
	requireVMImage(t)
	c := startCRI(t)
	ctx := t.Context()
	pod := c.podConfig(t, "half")
	done := make(chan error, 1)
	go func() {
		_, err := c.Runtime.RunPodSandbox(ctx, pod, "aurae-vm")
		done <- err
	}()
	// Wait for the template maker's QEMU.
	var makerPid int
	deadline := time.Now().Add(3 * time.Minute)
	for makerPid == 0 && time.Now().Before(deadline) {
		tmps, _ := filepath.Glob(filepath.Join(templatesDir(c), ".tmp-*", "v", "hypervisor.pid"))
		for _, p := range tmps {
			if b, err := os.ReadFile(p); err == nil {
				makerPid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
			}
		}
		select {
		case err := <-done:
			t.Fatalf("RunPodSandbox ended before the template maker ran: %v", err)
		case <-time.After(20 * time.Millisecond):
		}
	}
	if makerPid == 0 {
		t.Fatal("no template maker's QEMU within 3 min")
	}
	c.Kill9()
	if err := <-done; err == nil {
		t.Log("RunPodSandbox returned before the kill took effect")
	}
	c.Restart(t)

	if tmps, _ := filepath.Glob(filepath.Join(templatesDir(c), ".tmp-*")); len(tmps) > 0 {
		t.Errorf("unfinished templates left after the restart: %v", tmps)
	}
	if isQEMU(makerPid) {
		t.Errorf("the unfinished template's QEMU (pid %d) still runs", makerPid)
	}
	ents, _ := os.ReadDir(templatesDir(c))
	for _, e := range ents {
		for _, f := range []string{"meta.json", "state"} {
			if _, err := os.Stat(filepath.Join(templatesDir(c), e.Name(), f)); err != nil {
				t.Errorf("template %s is not whole: %v", e.Name(), err)
			}
		}
	}

	next := c.podConfig(t, "next")
	podID, err := c.Runtime.RunPodSandbox(ctx, next, "aurae-vm")
	if err != nil {
		t.Fatalf("run vm pod after the restart: %v", err)
	}
	if boot, note := vmBoot(t, c, podID); boot != "template" {
		t.Errorf("vm pod after the restart booted %q: %s", boot, note)
	}
}
