package cgroup

import (
	"testing"
)

// The limits of a pod's slice as unit properties: systemd's quota is per
// second, rounded up to 10 ms as runc does; no limit is infinity.
func TestLimitProps(t *testing.T) {
	props := func(l Limits) map[string]any {
		out := map[string]any{}
		for _, p := range limitProps(l) {
			out[p.Name] = p.Value.Value()
		}
		return out
	}
	mem, quota, period, weight := int64(64<<20), int64(25000), uint64(100000), uint64(39)
	got := props(Limits{MemoryMax: &mem, CPUMax: &quota, CPUPeriod: &period, CPUWeight: &weight})
	want := map[string]any{"MemoryMax": uint64(64 << 20), "CPUQuotaPerSecUSec": uint64(250000), "CPUQuotaPeriodUSec": uint64(100000), "CPUWeight": uint64(39)}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %v, want %v", k, got[k], v)
		}
	}
	odd := int64(3333)
	if got := props(Limits{CPUMax: &odd})["CPUQuotaPerSecUSec"]; got != uint64(40000) {
		t.Errorf("a quota of 3333/100000 = %v, want 40000 (rounded up to 10 ms)", got)
	}
	none, zero := int64(0), uint64(0)
	got = props(Limits{MemoryMax: &none, CPUMax: &none, CPUPeriod: &zero})
	if got["MemoryMax"] != ^uint64(0) || got["CPUQuotaPerSecUSec"] != ^uint64(0) || got["CPUQuotaPeriodUSec"] != uint64(100000) {
		t.Errorf("no limits: %v", got)
	}
	if len(limitProps(Limits{})) != 0 {
		t.Error("properties for no limit at all")
	}
}
