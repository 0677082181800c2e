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
// template (made by a warm-up pod, not counted; its making is logged).
// The scenario runs once per `go test` run, whatever b.N is.
func BenchmarkVMPodStart(b *testing.B) {
	if !vmBenchOnce {
		vmBenchOnce = true
		vmBenchCold, vmBenchErr = measureVMPodStarts(b, false)
		if vmBenchErr == nil {
			vmBenchTpl, vmBenchErr = measureVMPodStarts(b, true)
		}
	}
	if vmBenchErr != nil {
		b.Fatal(vmBenchErr)
	}
	for _, r := range []struct {
		name string
		m    vmBenchRun
	}{{"cold", vmBenchCold}, {"tpl", vmBenchTpl}} {
		b.ReportMetric(ms(percentile(r.m.starts, 0.50)), "vm-"+r.name+"-p50-ms")
		b.ReportMetric(ms(percentile(r.m.starts, 0.99)), "vm-"+r.name+"-p99-ms")
		b.ReportMetric(float64(r.m.pss)/1024, "vm-"+r.name+"-pss-mib")
	}
}

// vmBenchRun is one run of 10 VM pods.
type vmBenchRun struct {
	starts []time.Duration
	pss    int // KiB, median
}

var (
	vmBenchOnce             bool
	vmBenchCold, vmBenchTpl vmBenchRun
	vmBenchErr              error
)

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

func measureVMPodStarts(b *testing.B, templates bool) (vmBenchRun, error) {
	for _, f := range []string{vmImageDir + "/vmlinux", vmImageDir + "/initramfs.cpio.gz"} {
		if _, err := os.Stat(f); err != nil {
			b.Skipf("no guest image (make vm-image): %v", err)
		}
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		b.Skip("qemu-system-x86_64 not installed")
	}
	name := "cold"
	c := startCRI(b, "--vm-templates=false")
	if templates {
		name = "template"
		c = startCRI(b)
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
		id, err := startBenchVMPod(ctx, c, c.podConfig(b, "vmbench-warmup"), image)
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
		t0 := time.Now()
		id, err := startBenchVMPod(ctx, c, c.podConfig(b, fmt.Sprintf("vmbench-%d", i)), image)
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
		qemu := qemuPids("aurae-vm-pod-" + id[:16])
		if len(qemu) != 1 {
			return vmBenchRun{}, fmt.Errorf("vm pod %s: QEMUs %v", id, qemu)
		}
		dir, err := memoryCgroupDir(qemu[0])
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
	if qemu := qemuPids("aurae-vm-pod-" + ids[len(ids)-1][:16]); len(qemu) == 1 {
		b.Logf("%s: the last VM pod's QEMU: %s", name, pssSplit(qemu[0]))
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
			if d, err := time.ParseDuration(fmt.Sprint(r["guest_dial"])); err == nil {
				phases["guest dial"] = append(phases["guest dial"], d)
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
	for _, name := range []string{"boot", "guest dial", "RunPodSandbox", "CreateContainer", "StartContainer"} {
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
