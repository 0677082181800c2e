package cgroup

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// TestDirsUnder: the path's directory in every hierarchy that has it, once
// per hierarchy (not again through a symlink naming the same mount), and
// nothing for a hierarchy without it or a file of that name.
func TestDirsUnder(t *testing.T) {
	root := t.TempDir()
	for _, d := range []string{"cpu,cpuacct/kube/pod1/ctr", "memory/kube/pod1/ctr", "pids/kube/pod1", "freezer/kube"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("cpu,cpuacct", filepath.Join(root, "cpu")); err != nil {
		t.Fatal(err)
	}
	fakeFiles(t, root, "freezer/kube/pod1/ctr", "cgroup.stray")

	got := dirsUnder(root, "kube/pod1/ctr")
	want := []string{filepath.Join(root, "cpu,cpuacct/kube/pod1/ctr"), filepath.Join(root, "memory/kube/pod1/ctr")}
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Fatalf("dirsUnder = %q, want %q", got, want)
	}
	if got := dirsUnder(root, "kube/none"); len(got) != 0 {
		t.Fatalf("dirsUnder of a missing path = %q, want none", got)
	}
	if got := dirsUnder(filepath.Join(root, "absent"), "kube"); got != nil {
		t.Fatalf("dirsUnder of a missing root = %q, want nil", got)
	}
}
