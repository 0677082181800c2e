package cgroup

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeFiles makes empty interface files under root.
func fakeFiles(t *testing.T, root string, files ...string) {
	t.Helper()
	for _, f := range files {
		p := filepath.Join(root, f)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func TestSetV2(t *testing.T) {
	root := t.TempDir()
	pod := "pods/p1"
	fakeFiles(t, root, pod+"/cpu.weight", pod+"/cpu.max", pod+"/cpuset.cpus", pod+"/cpuset.mems",
		pod+"/memory.max", pod+"/memory.swap.max", pod+"/hugetlb.2MB.max", pod+"/hugetlb.1GB.max", pod+"/memory.oom.group")
	r := Resources{CPUShares: 1024, CPUQuota: 50000, CPUPeriod: 100000, Cpus: "0", Mems: "0",
		MemoryLimit: 64 << 20, MemorySwap: 96 << 20, Hugepages: map[string]uint64{"2MB": 4 << 20},
		Unified: map[string]string{"memory.oom.group": "1"}}
	if err := setAt(root, true, pod, r); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"cpu.weight": "39", "cpu.max": "50000 100000", "cpuset.cpus": "0", "cpuset.mems": "0",
		"memory.max": "67108864", "memory.swap.max": "33554432", "hugetlb.2MB.max": "4194304",
		"hugetlb.1GB.max": "max", "memory.oom.group": "1",
	}
	for f, v := range want {
		if got := readFile(t, filepath.Join(root, pod, f)); got != v {
			t.Errorf("%s = %q, want %q", f, got, v)
		}
	}
	// The whole set: what is not asked for any more is lifted.
	if err := setAt(root, true, pod, Resources{}); err != nil {
		t.Fatal(err)
	}
	want = map[string]string{
		"cpu.weight": "100", "cpu.max": "max 100000", "cpuset.cpus": "", "memory.max": "max",
		"memory.swap.max": "max", "hugetlb.2MB.max": "max",
	}
	for f, v := range want {
		if got := readFile(t, filepath.Join(root, pod, f)); got != v {
			t.Errorf("after reset %s = %q, want %q", f, got, v)
		}
	}
}

func TestSetV1(t *testing.T) {
	root := t.TempDir()
	pod := "pods/p1"
	fakeFiles(t, root, "cpu/"+pod+"/cpu.shares", "cpu/"+pod+"/cpu.cfs_quota_us", "cpu/"+pod+"/cpu.cfs_period_us",
		"cpuset/pods/cpuset.cpus", "cpuset/pods/cpuset.mems", "cpuset/"+pod+"/cpuset.cpus", "cpuset/"+pod+"/cpuset.mems",
		"memory/"+pod+"/memory.limit_in_bytes", "memory/"+pod+"/memory.memsw.limit_in_bytes",
		"hugetlb/hugetlb.2MB.limit_in_bytes")
	if err := os.WriteFile(filepath.Join(root, "cpuset/pods/cpuset.cpus"), []byte("0-1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "cpuset/pods/cpuset.mems"), []byte("0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// The pod's hugetlb directory is made; its files are the kernel's.
	if err := os.MkdirAll(filepath.Join(root, "hugetlb", pod), 0o755); err != nil {
		t.Fatal(err)
	}
	fakeFiles(t, root, "hugetlb/"+pod+"/hugetlb.2MB.limit_in_bytes")
	r := Resources{CPUShares: 512, CPUQuota: 20000, CPUPeriod: 50000, MemoryLimit: 32 << 20, MemorySwap: 32 << 20,
		Hugepages: map[string]uint64{"2MB": 2 << 20}}
	if err := setAt(root, false, pod, r); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"cpu/" + pod + "/cpu.shares": "512", "cpu/" + pod + "/cpu.cfs_quota_us": "20000", "cpu/" + pod + "/cpu.cfs_period_us": "50000",
		"cpuset/" + pod + "/cpuset.cpus": "0-1", "cpuset/" + pod + "/cpuset.mems": "0",
		"memory/" + pod + "/memory.limit_in_bytes": "33554432", "memory/" + pod + "/memory.memsw.limit_in_bytes": "33554432",
		"hugetlb/" + pod + "/hugetlb.2MB.limit_in_bytes": "2097152",
	}
	for f, v := range want {
		if got := readFile(t, filepath.Join(root, f)); got != v {
			t.Errorf("%s = %q, want %q", f, got, v)
		}
	}
	if err := setAt(root, false, pod, Resources{}); err != nil {
		t.Fatal(err)
	}
	want = map[string]string{
		"cpu/" + pod + "/cpu.shares": "1024", "cpu/" + pod + "/cpu.cfs_quota_us": "-1", "cpu/" + pod + "/cpu.cfs_period_us": "100000",
		"memory/" + pod + "/memory.limit_in_bytes": "-1", "memory/" + pod + "/memory.memsw.limit_in_bytes": "-1",
		"hugetlb/" + pod + "/hugetlb.2MB.limit_in_bytes": "-1",
	}
	for f, v := range want {
		if got := readFile(t, filepath.Join(root, f)); got != v {
			t.Errorf("after reset %s = %q, want %q", f, got, v)
		}
	}
}

func TestSetRefusesBeforeWriting(t *testing.T) {
	root := t.TempDir()
	pod := "pods/p1"
	fakeFiles(t, root, "cpu/"+pod+"/cpu.shares", "memory/"+pod+"/memory.limit_in_bytes", pod+"/cpu.weight", pod+"/cgroup.kill")
	for name, tc := range map[string]struct {
		unified bool
		r       Resources
	}{
		"unified on v1":         {false, Resources{CPUShares: 2, Unified: map[string]string{"memory.oom.group": "1"}}},
		"no hugetlb":            {false, Resources{CPUShares: 2, Hugepages: map[string]uint64{"2MB": 1}}},
		"no memsw":              {false, Resources{CPUShares: 2, MemoryLimit: 1 << 20, MemorySwap: 2 << 20}},
		"swap below limit":      {false, Resources{CPUShares: 2, MemoryLimit: 2 << 20, MemorySwap: 1 << 20}},
		"core file":             {true, Resources{CPUShares: 2, Unified: map[string]string{"cgroup.kill": "1"}}},
		"escaping key":          {true, Resources{CPUShares: 2, Unified: map[string]string{"memory.x/../../cpu.weight": "1"}}},
		"absent key":            {true, Resources{CPUShares: 2, Unified: map[string]string{"io.max": "8:0 rbps=1"}}},
		"bad page size":         {true, Resources{CPUShares: 2, Hugepages: map[string]uint64{"2M": 1}}},
		"page size not enabled": {true, Resources{CPUShares: 2, Hugepages: map[string]uint64{"2MB": 1}}},
	} {
		err := setAt(root, tc.unified, pod, tc.r)
		if !errors.Is(err, ErrUnsupported) {
			t.Errorf("%s: %v, want ErrUnsupported", name, err)
		}
	}
	for _, f := range []string{"cpu/" + pod + "/cpu.shares", pod + "/cpu.weight", pod + "/cgroup.kill"} {
		if got := readFile(t, filepath.Join(root, f)); got != "" {
			t.Errorf("%s was written (%q) by a refused update", f, got)
		}
	}
}

func TestSetDoesNotFollowSymlinks(t *testing.T) {
	root := t.TempDir()
	pod := "pods/p1"
	fakeFiles(t, root, pod+"/cpu.max", pod+"/memory.max")
	outside := filepath.Join(t.TempDir(), "target")
	if err := os.WriteFile(outside, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(root, pod, "cpu.weight")); err != nil {
		t.Fatal(err)
	}
	if err := setAt(root, true, pod, Resources{CPUShares: 1024}); err == nil {
		t.Fatal("a symlinked interface file was written")
	}
	if got := readFile(t, outside); got != "" {
		t.Errorf("the symlink's target was written: %q", got)
	}
}

func TestWeightFromShares(t *testing.T) {
	for shares, want := range map[uint64]uint64{0: 100, 2: 1, 1024: 39, 262144: 10000, 1: 1, 1 << 20: 10000} {
		if got := WeightFromShares(shares); got != want {
			t.Errorf("WeightFromShares(%d) = %d, want %d", shares, got, want)
		}
	}
}
