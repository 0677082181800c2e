package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path"
	"sort"
	"strings"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/test/testimage"
)

const benchVMPods = 10

// BenchmarkVMPodStart measures VM pod start (handler aurae-vm): RunPodSandbox
// + CreateContainer + StartContainer until the container runs, for 10 pods
// one after another (each stays up), and the host memory of an idle VM pod
// (PSS of its QEMU and virtiofsds) once all 10 run: first with every VM
// booted cold (--vm-templates=false), then with VMs started from a VM
// template (made by a warm-up pod, not counted; its making is logged),
// then with a pool of one idle clone (--vm-pool-size=1; the pool's idle VM
// is not counted in the PSS and its own is reported apart) and pods that
// arrive once the pool has its VM ready (what a pool is for: on 2 cores, a
// refill that runs while the next pod starts slows that start as much as
// it saves).
// The scenario runs once per `go test` run, whatever b.N is.
func BenchmarkVMPodStart(b *testing.B) {
	if !vmBenchOnce {
		vmBenchOnce = true
		vmBenchCold, vmBenchErr = measureVMPodStarts(b, "cold")
		if vmBenchErr == nil {
			vmBenchTpl, vmBenchErr = measureVMPodStarts(b, "template")
		}
		if vmBenchErr == nil {
			vmBenchPool, vmBenchErr = measureVMPodStarts(b, "pool")
		}
	}
	if vmBenchErr != nil {
		b.Fatal(vmBenchErr)
	}
	for _, r := range []struct {
		name string
		m    vmBenchRun
	}{{"cold", vmBenchCold}, {"tpl", vmBenchTpl}, {"pool", vmBenchPool}} {
		b.ReportMetric(ms(percentile(r.m.starts, 0.50)), "vm-"+r.name+"-p50-ms")
		b.ReportMetric(ms(percentile(r.m.starts, 0.99)), "vm-"+r.name+"-p99-ms")
		b.ReportMetric(float64(r.m.pss)/1024, "vm-"+r.name+"-pss-mib")
	}
	b.ReportMetric(float64(vmBenchPool.pooledPSS)/1024, "vm-pool-idle-pss-mib")
}

// vmBenchRun is one run of 10 VM pods.
type vmBenchRun struct {
	starts []time.Duration
	pss    int // KiB, median
	// pooledPSS: the pool's idle VM's QEMU (KiB), pool runs only.
	pooledPSS int
}

var (
	vmBenchOnce                          bool
	vmBenchCold, vmBenchTpl, vmBenchPool vmBenchRun
	vmBenchErr                           error
)

// benchVMPodConfig is a pod as the kubelet sends one without
// shareProcessNamespace: its containers each have their own PID namespace
// (crictl's default, a PID namespace shared by the pod, costs a VM pod the
// start of the guest's namespace holder: ~0.3 s under TCG with
// aurae-holder, ~1 s with the guest auraed's own binary).
func benchVMPodConfig(b *testing.B, c *CRI, name string) *runtimeapi.PodSandboxConfig {
	pod := c.podConfig(b, name)
	pod.Linux.SecurityContext = &runtimeapi.LinuxSandboxSecurityContext{
		NamespaceOptions: &runtimeapi.NamespaceOption{Pid: runtimeapi.NamespaceMode_CONTAINER},
	}
	return pod
}

// startBenchVMPod runs a VM pod with a sleeping container and returns its id
// once the container runs.
func startBenchVMPod(ctx context.Context, c *CRI, pod *runtimeapi.PodSandboxConfig, image string) (string, error) {
	t0 := time.Now()
	podID, err := c.Runtime.RunPodSandbox(ctx, pod, "aurae-vm")
	if err != nil {
		return "", err
	}
	cfg := containerConfig("sleeper", image, "sleep", "3600")
	id, err := c.Runtime.CreateContainer(ctx, podID, cfg, pod)
	if err != nil {
		return podID, err
	}
	if err := c.Runtime.StartContainer(ctx, id); err != nil {
		return podID, err
	}
	for {
		st, err := c.Runtime.ContainerStatus(ctx, id, false)
		if err != nil {
			return podID, err
		}
		if st.GetStatus().GetState() == runtimeapi.ContainerState_CONTAINER_RUNNING {
			return podID, nil
		}
		if time.Since(t0) > 3*time.Minute {
			return podID, fmt.Errorf("vm pod %s: container not running after 3 min", podID)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// vmQEMUPid is the pid of a VM pod's QEMU, from its VM's dir (a pooled
// VM's QEMU keeps the name it was started with).
func vmQEMUPid(c *CRI, podID string) (int, error) { return hypervisorPid(c, "pod-"+podID[:16]) }

// measureVMPodStarts runs the scenario with VMs started as mode says:
// "cold", "template" or "pool".
func measureVMPodStarts(b *testing.B, mode string) (vmBenchRun, error) {
	for _, f := range []string{vmImageDir + "/vmlinux", vmImageDir + "/initramfs.cpio.gz"} {
		if _, err := os.Stat(f); err != nil {
			b.Skipf("no guest image (make vm-image): %v", err)
		}
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		b.Skip("qemu-system-x86_64 not installed")
	}
	name, templates := mode, mode != "cold"
	var c *CRI
	switch mode {
	case "cold":
		c = startCRI(b, "--vm-templates=false")
	case "template":
		c = startCRI(b)
	default:
		c = startCRI(b, "--vm-pool-size=1")
	}
	image := c.pushBusybox(b, "bench/busybox:vm", testimage.Options{})
	ctx := b.Context()
	var ids []string
	defer func() {
		// The next run measures alone.
		for _, id := range ids {
			_ = c.Runtime.StopPodSandbox(ctx, id)
			_ = c.Runtime.RemovePodSandbox(ctx, id)
		}
	}()
	if templates {
		// The warm-up pod makes the template.
		t0 := time.Now()
		id, err := startBenchVMPod(ctx, c, benchVMPodConfig(b, c, "vmbench-warmup"), image)
		if id != "" {
			ids = append(ids, id)
		}
		if err != nil {
			return vmBenchRun{}, err
		}
		b.Logf("vm pod start that made the template: %v", time.Since(t0).Round(time.Millisecond))
	}
	var run vmBenchRun
	for i := range benchVMPods {
		if mode == "pool" {
			if err := waitRecord(c, "vm pool: vm ready", i+1, 3*time.Minute); err != nil {
				return vmBenchRun{}, err
			}
		}
		t0 := time.Now()
		id, err := startBenchVMPod(ctx, c, benchVMPodConfig(b, c, fmt.Sprintf("vmbench-%d", i)), image)
		if id != "" {
			ids = append(ids, id)
		}
		if err != nil {
			return vmBenchRun{}, err
		}
		run.starts = append(run.starts, time.Since(t0))
	}
	time.Sleep(5 * time.Second) // idle
	// A VM pod's host processes are QEMU and its virtiofsds, all in the
	// pod's VM cgroup: its PSS is theirs.
	var pss []int
	for _, id := range ids[len(ids)-benchVMPods:] {
		qemu, err := vmQEMUPid(c, id)
		if err != nil {
			return vmBenchRun{}, fmt.Errorf("vm pod %s: %w", id, err)
		}
		dir, err := memoryCgroupDir(qemu)
		if err != nil {
			return vmBenchRun{}, err
		}
		procs := cgroupPids(dir)
		if len(procs) == 0 {
			return vmBenchRun{}, fmt.Errorf("vm pod %s: no processes in %s", id, dir)
		}
		sum := 0
		for _, pid := range procs {
			sum += pssKiB(pid)
		}
		pss = append(pss, sum)
	}
	if qemu, err := vmQEMUPid(c, ids[len(ids)-1]); err == nil {
		b.Logf("%s: the last VM pod's QEMU: %s", name, pssSplit(qemu))
	}
	if mode == "pool" {
		boots := map[string]int{}
		for _, id := range ids {
			boot, _ := vmBoot(b, c, id)
			boots[boot]++
		}
		for _, pid := range pooledQEMUPids(c) {
			run.pooledPSS = pssKiB(pid)
			b.Logf("pool: the idle pooled VM's QEMU: PSS %d KiB: %s", run.pooledPSS, pssSplit(pid))
		}
		b.Logf("pool: how the VMs started (warm-up included): %v", boots)
	}
	sort.Ints(pss)
	run.pss = pss[len(pss)/2]
	load, _ := os.ReadFile("/proc/loadavg")
	b.Logf("%s: vm pod starts %v; host PSS KiB per VM pod (QEMU + virtiofsd) %v; load average %s", name, run.starts, pss, strings.TrimSpace(string(load)))
	logVMStartPhases(b, c)
	return run, nil
}

// logVMStartPhases logs the medians of where a VM pod's start goes, from
// the daemons' own log lines: the VM's boot (QEMU started until the guest
// auraed answers), the guest dial, the whole RunPodSandbox, and
// StartContainer (the container's start in the guest).
func logVMStartPhases(b *testing.B, c *CRI) {
	phases := map[string][]time.Duration{}
	for _, r := range c.Records() {
		switch {
		case r["msg"] == "vm started":
			if d, err := time.ParseDuration(fmt.Sprint(r["boot"])); err == nil {
				phases["boot"] = append(phases["boot"], d)
			}
		case r["msg"] == "vm pod running":
			dial, err1 := time.ParseDuration(fmt.Sprint(r["guest_dial"]))
			start, err2 := time.ParseDuration(fmt.Sprint(r["vm_start"]))
			total, err3 := time.ParseDuration(fmt.Sprint(r["total"]))
			if err1 == nil && err2 == nil && err3 == nil {
				phases["guest dial"] = append(phases["guest dial"], dial)
				phases["host pod + VmService Create/Start"] = append(phases["host pod + VmService Create/Start"], start)
				phases["guest pod"] = append(phases["guest pod"], total-start-dial)
			}
		case r["msg"] == "gRPC call" && r["component"] == nil:
			m, _ := r["method"].(string)
			d, _ := r["duration"].(float64)
			if name := path.Base(m); name == "RunPodSandbox" || name == "CreateContainer" || name == "StartContainer" {
				phases[name] = append(phases[name], time.Duration(d))
			}
		}
	}
	var parts []string
	for _, name := range []string{"boot", "host pod + VmService Create/Start", "guest dial", "guest pod", "RunPodSandbox", "CreateContainer", "StartContainer"} {
		if ds := phases[name]; len(ds) > 0 {
			parts = append(parts, fmt.Sprintf("%s %v (%d)", name, percentile(ds, 0.50).Round(time.Millisecond), len(ds)))
		}
	}
	b.Logf("vm pod start phases, p50: %s", strings.Join(parts, ", "))
	printStepMedians("median step durations (both daemons, warm-up included)", c.Records())
}

// pssSplit is a process's PSS by kind (smaps_rollup), in KiB: the guest's
// RAM (shmem: QEMU's memfd), anonymous memory (QEMU's heap and TCG
// translation cache) and files.
func pssSplit(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return err.Error()
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		for _, k := range []string{"Pss_Shmem:", "Pss_Anon:", "Pss_File:"} {
			if rest, ok := strings.CutPrefix(l, k); ok {
				out = append(out, strings.TrimSuffix(k, ":")+" "+strings.TrimSpace(rest))
			}
		}
	}
	return strings.Join(out, ", ")
}
