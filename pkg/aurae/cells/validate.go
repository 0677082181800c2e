package cells

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/containerd/errdefs"

	cellsv0 "github.com/aurae-runtime/aurae-cri/api/cells/v0"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/cgroup"
)

const (
	maxNameLen    = 255
	maxSegmentLen = 64
	// Depth of nested cells; deeper trees only make cgroup paths long.
	maxDepth = 8
)

// validName checks one segment of a cell name, or an executable name: a
// portable file name that is safe as a cgroup directory.
func validName(s string) error {
	if s == "" {
		return fmt.Errorf("empty name: %w", errdefs.ErrInvalidArgument)
	}
	if len(s) > maxSegmentLen {
		return fmt.Errorf("name %q is longer than %d characters: %w", s, maxSegmentLen, errdefs.ErrInvalidArgument)
	}
	// A leading letter or digit: "." and ".." are refused, and names
	// starting with "." stay free for auraed's own cgroups (".pods").
	if !isAlnum(rune(s[0])) {
		return fmt.Errorf("name %q must start with a letter or digit: %w", s, errdefs.ErrInvalidArgument)
	}
	for _, r := range s {
		if !isAlnum(r) && r != '-' && r != '_' && r != '.' {
			return fmt.Errorf("name %q: character %q is not allowed (letters, digits, '-', '_', '.'): %w", s, r, errdefs.ErrInvalidArgument)
		}
	}
	return nil
}

// validCellName checks a cell name: segments separated by '/', relative.
func validCellName(name string) error {
	if name == "" {
		return fmt.Errorf("cell name is empty: %w", errdefs.ErrInvalidArgument)
	}
	if len(name) > maxNameLen {
		return fmt.Errorf("cell name is longer than %d characters: %w", maxNameLen, errdefs.ErrInvalidArgument)
	}
	if strings.HasPrefix(name, "/") {
		return fmt.Errorf("cell name %q is absolute: %w", name, errdefs.ErrInvalidArgument)
	}
	segs := strings.Split(name, "/")
	if len(segs) > maxDepth {
		return fmt.Errorf("cell name %q nests deeper than %d: %w", name, maxDepth, errdefs.ErrInvalidArgument)
	}
	for _, s := range segs {
		if err := validName(s); err != nil {
			return fmt.Errorf("cell name %q: %w", name, err)
		}
	}
	return nil
}

func parentName(name string) string {
	i := strings.LastIndexByte(name, '/')
	if i < 0 {
		return ""
	}
	return name[:i]
}

// limitsOf checks the cell's controllers against the documented ranges and
// the host, and turns them into cgroup limits.
func limitsOf(c *cellsv0.Cell) (cgroup.Limits, error) {
	var l cgroup.Limits
	if cpu := c.GetCpu(); cpu != nil {
		if cpu.Weight != nil {
			if w := cpu.GetWeight(); w < 1 || w > 10000 {
				return l, fmt.Errorf("cpu weight %d is outside 1..10000: %w", w, errdefs.ErrInvalidArgument)
			}
			l.CPUWeight = cpu.Weight
		}
		if cpu.Period != nil {
			if p := cpu.GetPeriod(); p < 1000 || p > 1000000 {
				return l, fmt.Errorf("cpu period %d µs is outside 1000..1000000: %w", p, errdefs.ErrInvalidArgument)
			}
			l.CPUPeriod = cpu.Period
		}
		if cpu.Max != nil {
			// The kernel refuses quotas under 1 ms.
			if m := cpu.GetMax(); m < 1000 {
				return l, fmt.Errorf("cpu max %d µs is below the kernel's minimum of 1000: %w", m, errdefs.ErrInvalidArgument)
			}
			l.CPUMax = cpu.Max
		}
	}
	if cs := c.GetCpuset(); cs != nil {
		if cs.Cpus != nil {
			if err := checkList("cpuset cpus", cs.GetCpus(), "/sys/devices/system/cpu/online"); err != nil {
				return l, err
			}
			l.Cpus = cs.Cpus
		}
		if cs.Mems != nil {
			if err := checkList("cpuset mems", cs.GetMems(), "/sys/devices/system/node/online"); err != nil {
				return l, err
			}
			l.Mems = cs.Mems
		}
	}
	if m := c.GetMemory(); m != nil {
		for _, f := range []struct {
			name string
			v    *int64
			dst  **int64
		}{{"min", m.Min, &l.MemoryMin}, {"low", m.Low, &l.MemoryLow}, {"high", m.High, &l.MemoryHigh}, {"max", m.Max, &l.MemoryMax}} {
			if f.v == nil {
				continue
			}
			if *f.v < 0 {
				return l, fmt.Errorf("memory %s %d is negative: %w", f.name, *f.v, errdefs.ErrInvalidArgument)
			}
			*f.dst = f.v
		}
	}
	if err := l.Check(); err != nil {
		return l, fmt.Errorf("%w: %w", err, errdefs.ErrFailedPrecondition)
	}
	return l, nil
}

// checkList parses a cpuset list ("0-2,4") and checks that every id is
// online on this host (listed in the sysfs file online).
func checkList(what, list, online string) error {
	ids, err := parseList(list)
	if err != nil {
		return fmt.Errorf("%s %q: %w: %w", what, list, err, errdefs.ErrInvalidArgument)
	}
	b, err := os.ReadFile(online)
	if err != nil {
		return nil // no such sysfs file: the kernel checks on write
	}
	have, err := parseList(strings.TrimSpace(string(b)))
	if err != nil {
		return nil
	}
	for id := range ids {
		if !have[id] {
			return fmt.Errorf("%s %q: %d is not online here (online: %s): %w", what, list, id, strings.TrimSpace(string(b)), errdefs.ErrInvalidArgument)
		}
	}
	return nil
}

func parseList(s string) (map[int]bool, error) {
	out := map[int]bool{}
	if s == "" {
		return nil, fmt.Errorf("empty list")
	}
	for _, part := range strings.Split(s, ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		if err != nil || a < 0 {
			return nil, fmt.Errorf("bad id %q", lo)
		}
		b := a
		if isRange {
			if b, err = strconv.Atoi(hi); err != nil || b < a {
				return nil, fmt.Errorf("bad range %q", part)
			}
		}
		if b-a > 4096 {
			return nil, fmt.Errorf("range %q too large", part)
		}
		for i := a; i <= b; i++ {
			out[i] = true
		}
	}
	return out, nil
}

func isAlnum(r rune) bool {
	return r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9'
}
