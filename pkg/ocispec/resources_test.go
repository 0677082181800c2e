package ocispec

import (
	"encoding/json"
	"testing"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

func u64(v uint64) *uint64 { return &v }
func i64p(v int64) *int64  { return &v }

func TestResources(t *testing.T) {
	tests := []struct {
		name      string
		res       *runtimeapi.LinuxContainerResources
		pids      int64
		swapAcct  bool
		want      specs.LinuxResources
		wantError bool
	}{
		{name: "none"},
		{
			name: "cpu and cpuset",
			res:  &runtimeapi.LinuxContainerResources{CpuShares: 512, CpuQuota: 50000, CpuPeriod: 100000, CpusetCpus: "0-1", CpusetMems: "0"},
			want: specs.LinuxResources{CPU: &specs.LinuxCPU{Shares: u64(512), Quota: i64p(50000), Period: u64(100000), Cpus: "0-1", Mems: "0"}},
		},
		{
			name: "quota -1 is kept (unlimited)",
			res:  &runtimeapi.LinuxContainerResources{CpuQuota: -1},
			want: specs.LinuxResources{CPU: &specs.LinuxCPU{Quota: i64p(-1)}},
		},
		{
			name: "memory without swap accounting",
			res:  &runtimeapi.LinuxContainerResources{MemoryLimitInBytes: 64 << 20, MemorySwapLimitInBytes: 128 << 20},
			want: specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64p(64 << 20)}},
		},
		{
			name:     "memory with swap accounting: swap = limit",
			res:      &runtimeapi.LinuxContainerResources{MemoryLimitInBytes: 64 << 20},
			swapAcct: true,
			want:     specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64p(64 << 20), Swap: i64p(64 << 20)}},
		},
		{
			name:     "explicit swap limit",
			res:      &runtimeapi.LinuxContainerResources{MemoryLimitInBytes: 64 << 20, MemorySwapLimitInBytes: 128 << 20},
			swapAcct: true,
			want:     specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64p(64 << 20), Swap: i64p(128 << 20)}},
		},
		{
			name: "hugepages and unified ignored",
			res: &runtimeapi.LinuxContainerResources{
				HugepageLimits: []*runtimeapi.HugepageLimit{{PageSize: "2MB", Limit: 1 << 21}},
				Unified:        map[string]string{"memory.high": "1"},
			},
		},
		{
			name: "pids limit",
			pids: 100,
			want: specs.LinuxResources{Pids: &specs.LinuxPids{Limit: i64p(100)}},
		},
		{name: "negative shares", res: &runtimeapi.LinuxContainerResources{CpuShares: -1}, wantError: true},
		{name: "negative period", res: &runtimeapi.LinuxContainerResources{CpuPeriod: -1}, wantError: true},
		{name: "negative memory", res: &runtimeapi.LinuxContainerResources{MemoryLimitInBytes: -1}, wantError: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := testInput()
			in.PidsLimit, in.SwapAccounting = tc.pids, tc.swapAcct
			if tc.res != nil {
				in.Config.Linux = &runtimeapi.LinuxContainerConfig{Resources: tc.res}
			}
			s, err := Generate(in)
			if tc.wantError {
				checkErr(t, err, errdefs.ErrInvalidArgument)
				return
			}
			checkErr(t, err, nil)
			got := *s.Linux.Resources
			got.Devices = nil
			g, _ := json.Marshal(got)
			w, _ := json.Marshal(tc.want)
			if string(g) != string(w) {
				t.Errorf("resources %s, want %s", g, w)
			}
		})
	}
}

func TestOOMScoreAdj(t *testing.T) {
	tests := []struct {
		name      string
		res       *runtimeapi.LinuxContainerResources
		minAdj    int
		want      int
		wantError bool
	}{
		{name: "no resources", want: 0},
		{name: "no resources, runtime above 0", minAdj: 10, want: 10},
		{name: "requested", res: &runtimeapi.LinuxContainerResources{OomScoreAdj: 999}, want: 999},
		{name: "kubelet's -997 clamped to the runtime's 0", res: &runtimeapi.LinuxContainerResources{OomScoreAdj: -997}, want: 0},
		{name: "clamped to the runtime's own", res: &runtimeapi.LinuxContainerResources{OomScoreAdj: -997}, minAdj: -500, want: -500},
		{name: "allowed when the runtime may", res: &runtimeapi.LinuxContainerResources{OomScoreAdj: -997}, minAdj: -1000, want: -997},
		{name: "above the kernel's range", res: &runtimeapi.LinuxContainerResources{OomScoreAdj: 1001}, wantError: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := testInput()
			in.Pod.OOMScoreAdjMin = tc.minAdj
			if tc.res != nil {
				in.Config.Linux = &runtimeapi.LinuxContainerConfig{Resources: tc.res}
			}
			s, err := Generate(in)
			if tc.wantError {
				checkErr(t, err, errdefs.ErrInvalidArgument)
				return
			}
			checkErr(t, err, nil)
			if s.Process.OOMScoreAdj == nil || *s.Process.OOMScoreAdj != tc.want {
				t.Errorf("oom_score_adj %v, want %d", s.Process.OOMScoreAdj, tc.want)
			}
		})
	}
}
