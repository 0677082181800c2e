package critest_test

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestCritestImageList checks the reading of critest's image list from its
// source (in the module cache once make deps built critest).
func TestCritestImageList(t *testing.T) {
	cmd := exec.Command(goBin(), "list", "-m", "-json", "sigs.k8s.io/cri-tools")
	cmd.Dir = filepath.Join(repoRoot(t), "hack/critest")
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=readonly", "GOPROXY=off")
	b, err := cmd.Output()
	var m struct{ Dir string }
	if err != nil || json.Unmarshal(b, &m) != nil || m.Dir == "" {
		t.Skipf("cri-tools source not in the module cache (make deps): %v", err)
	}
	if _, err := os.Stat(m.Dir); err != nil {
		t.Skipf("cri-tools source not in the module cache (make deps): %v", err)
	}
	refs := critestImages(t, m.Dir)
	t.Logf("%d images: %s", len(refs), strings.Join(refs, "\n"))
	var busybox, digest, hostnet bool
	for _, r := range refs {
		host, repoTag := splitRef(r)
		if !strings.Contains(host, ".") || repoTag == "" {
			t.Errorf("%q: no registry host", r)
		}
		if strings.Contains(r, "/win-") {
			t.Errorf("%q: a Windows image", r)
		}
		busybox = busybox || strings.Contains(repoTag, "busybox:")
		digest = digest || strings.Contains(repoTag, "@sha256:")
		hostnet = hostnet || strings.Contains(repoTag, "hostnet-nginx-")
	}
	if !busybox || !digest || !hostnet {
		t.Errorf("busybox %v, by digest %v, hostnet-nginx %v: want all found", busybox, digest, hostnet)
	}
}
