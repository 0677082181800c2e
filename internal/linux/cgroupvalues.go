package linux

import (
	"strconv"
	"strings"
)

// MaxCPUNumber bounds the cpu and node numbers of a cpuset list.
const MaxCPUNumber = 8192

// ValidCPUList reports whether s is a cpuset list ("0-3,6": ascending,
// non-overlapping, each below MaxCPUNumber), as cpuset.cpus and
// cpuset.mems take them; "" is not one.
func ValidCPUList(s string) bool {
	if s == "" || len(s) > 1024 {
		return false
	}
	prev := -1
	for _, part := range strings.Split(s, ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		if !isRange {
			hi = lo
		}
		a, ok := cpuNumber(lo)
		b, okHi := cpuNumber(hi)
		if !ok || !okHi || a <= prev || b < a {
			return false
		}
		prev = b
	}
	return true
}

func cpuNumber(s string) (int, bool) {
	if s == "" || strings.TrimLeft(s, "0123456789") != "" {
		return 0, false
	}
	n, err := strconv.Atoi(s)
	return n, err == nil && n < MaxCPUNumber
}

// ValidPageSize reports whether s names a hugepage size as the kubelet and
// runc do ("2MB", "1GB", "64KB").
func ValidPageSize(s string) bool {
	for _, unit := range []string{"KB", "MB", "GB"} {
		if n, ok := strings.CutSuffix(s, unit); ok {
			v, err := strconv.ParseUint(n, 10, 32)
			return err == nil && v > 0 && strconv.FormatUint(v, 10) == n
		}
	}
	return false
}
