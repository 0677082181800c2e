package e2e

import (
	"fmt"
	"os"
	"os/exec"
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
// (PSS of its QEMU, the only host process a VM pod has), once all run. The
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
	var pss []int
	for _, id := range ids {
		for _, pid := range qemuPids("aurae-vm-pod-" + id[:16]) {
			pss = append(pss, pssKiB(pid))
		}
	}
	if len(pss) != len(ids) {
		return nil, 0, fmt.Errorf("found %d QEMUs for %d VM pods", len(pss), len(ids))
	}
	sort.Ints(pss)
	b.Logf("vm pod starts %v; QEMU PSS KiB %v", starts, pss)
	return starts, pss[len(pss)/2], nil
}
