package cgroup

import (
	"errors"
	"fmt"
	"path"
	"strings"
)

// ErrNotSlice is returned under the systemd driver for a cgroup parent that
// is not a systemd slice (a cgroupfs path, or a malformed slice name).
var ErrNotSlice = errors.New("not a systemd slice")

// unitNameMax is systemd's UNIT_NAME_MAX less the terminating NUL.
const unitNameMax = 255

// RootSlice is the slice under which auraed makes pods whose parent is not a
// slice, for a --cgroup-root: "aurae" -> "aurae.slice", "/" or "" -> "-.slice"
// (the root slice). '-' is systemd's nesting separator in slice names, so a
// root's own '-' become '_' and its '/' become '-' ("a/b-c" -> "a-b_c.slice").
func RootSlice(cgroupRoot string) string {
	r := strings.Trim(cgroupRoot, "/")
	if r == "" {
		return "-.slice"
	}
	var parts []string
	for _, p := range strings.Split(r, "/") {
		// A hidden level (auraed's ".pods") needs no dot in a unit name.
		if p = strings.TrimLeft(p, "."); p != "" {
			parts = append(parts, escapeSliceUnit(strings.ReplaceAll(p, "-", "_")))
		}
	}
	if len(parts) == 0 {
		return "-.slice"
	}
	return strings.Join(parts, "-") + ".slice"
}

// SystemdParent resolves a pod's cgroup parent under the systemd driver to a
// slice name: a slice ("kubepods-burstable-pod<uid>.slice") as it is, or
// given by its cgroup path
// ("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice",
// the form the kubelet 1.37 passes; as containerd does, its last element);
// a plain name ("pods", or empty for "pods") as a slice below the root
// slice; a cgroupfs path ("/kubepods/pod<uid>") is refused (ErrNotSlice).
func SystemdParent(root, parent string) (string, error) {
	if strings.Contains(parent, "/") {
		base := path.Base(parent)
		if !strings.HasSuffix(base, ".slice") {
			return "", fmt.Errorf("cgroup parent %q is a cgroupfs path: %w (the systemd cgroup driver wants a slice such as kubepods-burstable-pod<uid>.slice)", parent, ErrNotSlice)
		}
		dir, err := ExpandSlice(base)
		if err != nil {
			return "", err
		}
		if dir != strings.Trim(parent, "/") {
			return "", fmt.Errorf("cgroup parent %q is not where systemd puts slice %s (/%s): %w", parent, base, dir, ErrNotSlice)
		}
		return base, nil
	}
	if strings.HasSuffix(parent, ".slice") {
		if _, err := ExpandSlice(parent); err != nil {
			return "", err
		}
		return parent, nil
	}
	if parent == "" {
		parent = "pods"
	}
	return ChildSlice(root, strings.ReplaceAll(parent, "-", "_"))
}

// ChildSlice is the slice named name below parent ("a-b.slice", "c" ->
// "a-b-c.slice"); name is escaped as one level.
func ChildSlice(parent, name string) (string, error) {
	if _, err := ExpandSlice(parent); err != nil {
		return "", err
	}
	stem := strings.TrimSuffix(parent, ".slice")
	var s string
	if stem == "-" {
		s = escapeSliceUnit(name) + ".slice"
	} else {
		s = stem + "-" + escapeSliceUnit(name) + ".slice"
	}
	if len(s) > unitNameMax {
		return "", fmt.Errorf("slice %q is longer than %d characters: %w", s, unitNameMax, ErrNotSlice)
	}
	return s, nil
}

// ExpandSlice is the cgroup path (below the hierarchy's root, no leading
// slash) of a slice unit, as systemd lays slices out:
// "kubepods-burstable-pod1.slice" ->
// "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice";
// "-.slice" -> "".
func ExpandSlice(slice string) (string, error) {
	bad := func(why string) error {
		return fmt.Errorf("slice %q: %s: %w", slice, why, ErrNotSlice)
	}
	stem, ok := strings.CutSuffix(slice, ".slice")
	switch {
	case !ok:
		return "", bad("no .slice suffix")
	case slice == "-.slice":
		return "", nil
	case len(slice) > unitNameMax:
		return "", bad(fmt.Sprintf("longer than %d characters", unitNameMax))
	case stem == "", strings.HasPrefix(stem, "-"), strings.HasSuffix(stem, "-"), strings.Contains(stem, "--"):
		return "", bad("empty level")
	}
	for _, r := range stem {
		if !unitChar(r) {
			return "", bad(fmt.Sprintf("character %q is not allowed in a unit name", r))
		}
	}
	var out []string
	prefix := ""
	for _, part := range strings.Split(stem, "-") {
		prefix += part
		out = append(out, prefix+".slice")
		prefix += "-"
	}
	return path.Join(out...), nil
}

func unitChar(r rune) bool {
	return r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' ||
		r == ':' || r == '_' || r == '.' || r == '-' || r == '\\'
}

// escapeSliceUnit escapes s for one level of a slice name as systemd-escape
// does: '-' and what a unit name may not hold become \xNN, and so does a
// leading '.'.
func escapeSliceUnit(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == ':' || c == '_' || c == '.'
		if !ok || (i == 0 && c == '.') {
			fmt.Fprintf(&b, `\x%02x`, c)
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}

// PodSlice is the slice of pod id below its parent slice.
func PodSlice(parent, id string) (string, error) {
	return ChildSlice(parent, "aurae_"+id)
}

// InfraScope is the scope of a pod's own processes (the pid namespace
// holder, the containers' monitors) in its slice. Containers' scopes are
// runc's "aurae-<container id>.scope" (ContainerScope).
func InfraScope(podID string) string { return "aurae_infra-" + podID + ".scope" }

// ContainerScopePrefix is the prefix of a container's cgroupsPath in
// systemd form ("<slice>:aurae:<id>"): runc names the scope
// "aurae-<id>.scope".
const ContainerScopePrefix = "aurae"

// ContainerScope is the scope runc makes for container id.
func ContainerScope(id string) string { return ContainerScopePrefix + "-" + id + ".scope" }

// SystemdCgroupsPath is a container's linux.cgroupsPath under the systemd
// driver ("slice:prefix:name", as runc --systemd-cgroup reads it).
func SystemdCgroupsPath(slice, id string) string {
	return slice + ":" + ContainerScopePrefix + ":" + id
}
