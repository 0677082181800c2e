package critest_test

import (
	"os"
	"path/filepath"
	"testing"
)

// TestKnownFailuresFile checks that the committed list parses: every spec
// with a reason.
func TestKnownFailuresFile(t *testing.T) {
	known, err := readKnownFailures(filepath.Join(repoRoot(t), "hack/critest/known-failures.txt"))
	if err != nil {
		t.Fatal(err)
	}
	for name, reason := range known {
		if name == "" || reason == "" {
			t.Errorf("%q: %q", name, reason)
		}
	}
}

func TestReadReport(t *testing.T) {
	f := filepath.Join(t.TempDir(), "report.json")
	report := `[{"SpecReports": [
	  {"ContainerHierarchyTexts": ["[k8s.io] A", "when b"], "LeafNodeText": "passes", "LeafNodeType": "It", "State": "passed"},
	  {"ContainerHierarchyTexts": ["[k8s.io] A"], "LeafNodeText": "fails", "LeafNodeType": "It", "State": "failed", "Failure": {"Message": "boom\nmore"}},
	  {"ContainerHierarchyTexts": ["[k8s.io] A"], "LeafNodeText": "times out", "LeafNodeType": "It", "State": "timedout"},
	  {"ContainerHierarchyTexts": ["[k8s.io] A"], "LeafNodeText": "skips", "LeafNodeType": "It", "State": "skipped"},
	  {"LeafNodeType": "SynchronizedBeforeSuite", "State": "passed"}
	]}]`
	if err := os.WriteFile(f, []byte(report), 0o644); err != nil {
		t.Fatal(err)
	}
	r, err := readReport(f)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.passed) != 1 || r.passed[0] != "[k8s.io] A when b passes" {
		t.Errorf("passed %q", r.passed)
	}
	if len(r.failed) != 2 || r.messages["[k8s.io] A fails"] != "failed: boom" {
		t.Errorf("failed %q, messages %q", r.failed, r.messages)
	}
	if len(r.skipped) != 1 {
		t.Errorf("skipped %q", r.skipped)
	}
}
