package e2e

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aurae-runtime/aurae-cri/test/testimage"
)

// TestCRIPodHolderBinary: aurae-cri's embedded auraed starts a pod's
// namespace holder from bin/aurae-holder beside it (not from its own
// binary), and that holder is the PID 1 of a pod that shares its PID
// namespace.
func TestCRIPodHolderBinary(t *testing.T) {
	c := startCRI(t)
	want := filepath.Join(filepath.Dir(binaries["aurae-cri"]), "aurae-holder")
	var got []string
	for _, r := range c.Records() {
		if r["msg"] == "pod namespace holder" {
			got = append(got, r["path"].(string))
		}
	}
	if len(got) != 1 || got[0] != want {
		t.Fatalf("pod namespace holder logged %v, want [%s]", got, want)
	}
	image := c.pushBusybox(t, "e2e/busybox:holder", testimage.Options{})
	pod := c.podConfig(t, "holder") // crictl's default: a shared PID namespace
	podID, err := c.Runtime.RunPodSandbox(t.Context(), pod, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range c.Records() {
		if r["msg"] == "pod allocated" && r["pod"] == podID && r["holder"] != want {
			t.Errorf("pod allocated with the holder %v, want %s", r["holder"], want)
		}
	}
	id := runContainer(t, c, podID, pod, containerConfig("c", image, "sleep", "1000"))
	out, _, err := c.Runtime.ExecSync(t.Context(), id, []string{"cat", "/proc/1/cmdline"}, 10*time.Second)
	if err != nil || strings.Trim(string(out), "\x00\n") != "aurae-pod-holder" {
		t.Fatalf("PID 1 of the pod: %q %v, want the holder", out, err)
	}
}
