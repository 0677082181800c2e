package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path"
	"sort"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/test/testimage"
)

const benchVMPods = 10

// BenchmarkVMPodStart measures VM pod start (handler aurae-vm): RunPodSandbox
// + CreateContainer + StartContainer until the container runs, for 10 pods
// one after another (each stays up), and the host memory of an idle VM pod
// (PSS of its QEMU and virtiofsds), once all run. The
// scenario runs once per `go test` run, whatever b.N is.
func BenchmarkVMPodStart(b *testing.B) {
	if !vmBenchOnce {
		vmBenchOnce = true
		vmBenchStarts, vmBenchPSS, vmBenchErr = measureVMPodStarts(b)
	}
	if vmBenchErr != nil {
		b.Fatal(vmBenchErr)
	}
	b.ReportMetric(ms(percentile(vmBenchStarts, 0.50)), "vm-p50-ms")
	b.ReportMetric(ms(percentile(vmBenchStarts, 0.99)), "vm-p99-ms")
	b.ReportMetric(float64(vmBenchPSS)/1024, "vm-pss-mib")
}

var (
	vmBenchOnce   bool
	vmBenchStarts []time.Duration
	vmBenchPSS    int
	vmBenchErr    error
)

func measureVMPodStarts(b *testing.B) ([]time.Duration, int, error) {
	for _, f := range []string{vmImageDir + "/vmlinux", vmImageDir + "/initramfs.cpio.gz"} {
		if _, err := os.Stat(f); err != nil {
			b.Skipf("no guest image (make vm-image): %v", err)
		}
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		b.Skip("qemu-system-x86_64 not installed")
	}
	c := startCRI(b)
	image := c.pushBusybox(b, "bench/busybox:vm", testimage.Options{})
	ctx := b.Context()
	var starts []time.Duration
	var ids []string
	for i := range benchVMPods {
		pod := c.podConfig(b, fmt.Sprintf("vmbench-%d", i))
		t0 := time.Now()
		podID, err := c.Runtime.RunPodSandbox(ctx, pod, "aurae-vm")
		if err != nil {
			return nil, 0, err
		}
		ids = append(ids, podID)
		cfg := containerConfig("sleeper", image, "sleep", "3600")
		id, err := c.Runtime.CreateContainer(ctx, podID, cfg, pod)
		if err != nil {
			return nil, 0, err
		}
		if err := c.Runtime.StartContainer(ctx, id); err != nil {
			return nil, 0, err
		}
		for {
			st, err := c.Runtime.ContainerStatus(ctx, id, false)
			if err != nil {
				return nil, 0, err
			}
			if st.GetStatus().GetState() == runtimeapi.ContainerState_CONTAINER_RUNNING {
				break
			}
			if time.Since(t0) > 3*time.Minute {
				return nil, 0, fmt.Errorf("vm pod %d: container not running after 3 min", i)
			}
			time.Sleep(20 * time.Millisecond)
		}
		starts = append(starts, time.Since(t0))
	}
	time.Sleep(5 * time.Second) // idle
	// A VM pod's host processes are QEMU and its virtiofsds, all in the
	// pod's VM cgroup: its PSS is theirs.
	var pss []int
	for _, id := range ids {
		qemu := qemuPids("aurae-vm-pod-" + id[:16])
		if len(qemu) != 1 {
			return nil, 0, fmt.Errorf("vm pod %s: QEMUs %v", id, qemu)
		}
		dir, err := memoryCgroupDir(qemu[0])
		if err != nil {
			return nil, 0, err
		}
		procs := cgroupPids(dir)
		if len(procs) == 0 {
			return nil, 0, fmt.Errorf("vm pod %s: no processes in %s", id, dir)
		}
		sum := 0
		for _, pid := range procs {
			sum += pssKiB(pid)
		}
		pss = append(pss, sum)
	}
	sort.Ints(pss)
	b.Logf("vm pod starts %v; host PSS KiB per VM pod (QEMU + virtiofsd) %v", starts, pss)
	logVMStartPhases(b, c)
	return starts, pss[len(pss)/2], nil
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
	for _, name := range []string{"boot", "guest dial", "RunPodSandbox", "CreateContainer", "StartContainer"} {
		if ds := phases[name]; len(ds) > 0 {
			b.Logf("vm pod start phase %s: p50 %v over %d", name, percentile(ds, 0.50).Round(time.Millisecond), len(ds))
		}
	}
}
