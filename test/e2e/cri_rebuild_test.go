package e2e

import (
	"bytes"
	"crypto/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/test/testimage"
)

// TestCRIRebuildAfterStateFileLoss kills aurae-cri (and its embedded
// auraed) with SIGKILL under three pods with a running container each,
// overwrites cri.db with garbage and starts it again. The file is moved
// aside and the state rebuilt from the on-disk records: the CRI lists the
// same pods and containers (ids, metadata, labels, annotations, log
// paths, images, states, start times, IPs), exec into one works, and stop
// and remove of every pod succeed (CNI DEL included) and leave nothing.
func TestCRIRebuildAfterStateFileLoss(t *testing.T) {
	c := startCrashCRI(t)
	ctx := t.Context()
	busybox := c.pushBusybox(t, "e2e/busybox:rebuild", testimage.Options{})

	type made struct {
		pod, ctr string
		podSt    *runtimeapi.PodSandboxStatus
		ctrSt    *runtimeapi.ContainerStatus
	}
	var all []made
	for i, name := range []string{"rebuild-a", "rebuild-b", "rebuild-c"} {
		pod := c.podConfig(t, name)
		pod.Annotations = map[string]string{"e2e/note": "pod " + name}
		if i == 1 {
			pod.PortMappings = []*runtimeapi.PortMapping{{ContainerPort: 80, HostPort: int32(freePort(t))}}
		}
		podID, err := c.Runtime.RunPodSandbox(ctx, pod, "")
		if err != nil {
			t.Fatal(err)
		}
		cfg := containerConfig("sleeper", busybox, "sleep", "1000")
		cfg.Annotations = map[string]string{"e2e/container": name}
		ctr := runContainer(t, c.CRI, podID, pod, cfg)
		ctrSt := waitContainerState(t, c.CRI, ctr, runtimeapi.ContainerState_CONTAINER_RUNNING)
		podSt, err := c.Runtime.PodSandboxStatus(ctx, podID, false)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, made{pod: podID, ctr: ctr, podSt: podSt.GetStatus(), ctrSt: ctrSt})
	}

	c.Kill9()
	garbage := make([]byte, 64<<10)
	_, _ = rand.Read(garbage)
	if err := os.WriteFile(filepath.Join(c.StateDir, "cri.db"), garbage, 0o600); err != nil {
		t.Fatal(err)
	}
	c.start(t)

	if aside, _ := filepath.Glob(filepath.Join(c.StateDir, "cri.db.corrupt-*")); len(aside) != 1 {
		t.Errorf("the garbage file was not moved aside: %v", aside)
	} else if b, err := os.ReadFile(aside[0]); err != nil || !bytes.Equal(b, garbage) {
		t.Errorf("the file moved aside is not the garbage: %v", err)
	}
	if logs := c.Logs(); !strings.Contains(logs, "state rebuilt from on-disk records") || !strings.Contains(logs, `"pods":3,"containers":3,"refused":0`) {
		t.Errorf("no summary line of the rebuild with its counts")
	}

	pods, err := c.Runtime.ListPodSandbox(ctx, nil)
	if err != nil || len(pods) != len(all) {
		t.Fatalf("pods after the rebuild: %v %v", pods, err)
	}
	ctrs, err := c.Runtime.ListContainers(ctx, nil)
	if err != nil || len(ctrs) != len(all) {
		t.Fatalf("containers after the rebuild: %v %v", ctrs, err)
	}
	for _, m := range all {
		ps, err := c.Runtime.PodSandboxStatus(ctx, m.pod, false)
		if err != nil {
			t.Fatalf("pod %s after the rebuild: %v", m.pod, err)
		}
		got, want := ps.GetStatus(), m.podSt
		if got.GetState() != runtimeapi.PodSandboxState_SANDBOX_READY || !proto.Equal(got.GetMetadata(), want.GetMetadata()) ||
			got.GetCreatedAt() != want.GetCreatedAt() || !proto.Equal(got.GetNetwork(), want.GetNetwork()) ||
			got.GetLabels()["app"] != want.GetLabels()["app"] || got.GetAnnotations()["e2e/note"] != want.GetAnnotations()["e2e/note"] {
			t.Errorf("pod after the rebuild:\n  %v\nbefore:\n  %v", got, want)
		}
		cs, err := c.Runtime.ContainerStatus(ctx, m.ctr, false)
		if err != nil {
			t.Fatalf("container %s after the rebuild: %v", m.ctr, err)
		}
		gc, wc := cs.GetStatus(), m.ctrSt
		if gc.GetState() != runtimeapi.ContainerState_CONTAINER_RUNNING || !proto.Equal(gc.GetMetadata(), wc.GetMetadata()) ||
			gc.GetCreatedAt() != wc.GetCreatedAt() || gc.GetStartedAt() != wc.GetStartedAt() || gc.GetLogPath() != wc.GetLogPath() ||
			gc.GetImage().GetImage() != wc.GetImage().GetImage() || gc.GetImageRef() != wc.GetImageRef() ||
			gc.GetLabels()["container"] != "sleeper" || gc.GetAnnotations()["e2e/container"] != wc.GetAnnotations()["e2e/container"] {
			t.Errorf("container after the rebuild:\n  %v\nbefore:\n  %v", gc, wc)
		}
	}
	out, _, err := c.Runtime.ExecSync(ctx, all[1].ctr, []string{"echo", "alive"}, 10*time.Second)
	if err != nil || string(out) != "alive\n" {
		t.Fatalf("exec in a rebuilt container: %q %v", out, err)
	}

	for _, m := range all {
		if err := c.Runtime.StopPodSandbox(ctx, m.pod); err != nil {
			t.Errorf("stop a rebuilt pod %s: %v", m.pod, err)
		}
		if err := c.Runtime.RemovePodSandbox(ctx, m.pod); err != nil {
			t.Errorf("remove a rebuilt pod %s: %v", m.pod, err)
		}
	}
	ctrd := c.containerd(t)
	defer func() { _ = ctrd.Close() }()
	for _, m := range all {
		for _, id := range []string{m.pod, m.ctr} {
			if left := c.leaks(t, id, 0, ctrd); len(left) > 0 {
				t.Errorf("left of %s:\n  %s", id, strings.Join(left, "\n  "))
			}
		}
	}
	if pods, err := c.Runtime.ListPodSandbox(ctx, nil); err != nil || len(pods) != 0 {
		t.Errorf("pods after removal: %v %v", pods, err)
	}
}
