package e2e

import (
	"bytes"
	"fmt"
	"os"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// TestCRIWedgedVMPod SIGSTOPs a VM pod's QEMU and virtiofsd (a guest that
// no longer answers): the other pods keep answering. List*,
// ContainerStatus and the stats calls return within seconds (the VM
// container's figures are its last known ones), and the exit of a
// container of a native pod is seen. Once the VM runs again, both pods
// stop and are removed, leaving no QEMU or virtiofsd.
func TestCRIWedgedVMPod(t *testing.T) {
	c, image, podV, idV := startVMPod(t, "wedged-vm")
	ctx := t.Context()
	inVM := runContainer(t, c, idV, podV, containerConfig("sleeper", image, "sleep", "300"))
	podO := c.podConfig(t, "other")
	idO, err := c.Runtime.RunPodSandbox(ctx, podO, "")
	if err != nil {
		t.Fatal(err)
	}
	quitter := runContainer(t, c, idO, podO, containerConfig("quitter", image, "sh", "-c", "while [ ! -e /tmp/go ]; do sleep 0.1; done; exit 5"))
	waitContainerState(t, c, inVM, runtimeapi.ContainerState_CONTAINER_RUNNING)
	waitContainerState(t, c, quitter, runtimeapi.ContainerState_CONTAINER_RUNNING)
	// Figures of the VM container, before the guest stops.
	deadline := time.Now().Add(2 * time.Minute)
	for !slices.Contains(statsIDs(t, c), inVM) {
		if time.Now().After(deadline) {
			t.Fatal("no stats of the VM container")
		}
		time.Sleep(500 * time.Millisecond)
	}

	vmProcs := vmPodProcesses(idV)
	if len(vmProcs) < 2 {
		t.Fatalf("QEMU and virtiofsd of the VM pod: pids %v", vmProcs)
	}
	for _, p := range vmProcs {
		if err := syscall.Kill(p, syscall.SIGSTOP); err != nil {
			t.Fatalf("SIGSTOP %d: %v", p, err)
		}
	}
	cont := sync.OnceFunc(func() {
		for _, p := range vmProcs {
			_ = syscall.Kill(p, syscall.SIGCONT)
		}
	})
	t.Cleanup(cont)
	t.Logf("SIGSTOPped QEMU and virtiofsd of the VM pod: %v", vmProcs)

	calls := func() {
		answersWithAWedgedPod(t, c, 5*time.Second, 2, []string{inVM, quitter}, idV)
		if !slices.Contains(statsIDs(t, c), inVM) {
			t.Fatal("the stopped VM's container has no figures; want its last known ones")
		}
	}
	calls()
	exitSeenWithAWedgedPod(t, c, quitter, 5, calls)
	cont()
	removePods(t, c, idV, idO)
	if left := vmPodProcesses(idV); len(left) > 0 {
		t.Fatalf("processes of the removed VM pod left: %v", left)
	}
}

// statsIDs are the containers ListContainerStats answers for.
func statsIDs(t *testing.T, c *CRI) []string {
	t.Helper()
	stats, err := c.Runtime.ListContainerStats(t.Context(), nil)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, s := range stats {
		ids = append(ids, s.GetAttributes().GetId())
	}
	return ids
}

// vmPodProcesses are the pids of a VM pod's QEMU and virtiofsd processes.
func vmPodProcesses(podID string) []int {
	pids := qemuPids("aurae-vm-pod-" + podID[:16])
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		var pid int
		if _, err := fmt.Sscanf(e.Name(), "%d", &pid); err != nil {
			continue
		}
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if bytes.Contains(b, []byte("virtiofsd")) && bytes.Contains(b, []byte("pod-"+podID[:16])) {
			pids = append(pids, pid)
		}
	}
	return pids
}
