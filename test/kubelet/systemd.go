package kubelet

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/aurae-runtime/aurae-cri/pkg/aurae/cgroup"
)

// rootSlice is the slice of a kubelet cgroupRoot under the systemd driver:
// "/e2e_root" -> "e2e_root.slice" (one level, as the kubelet converts it);
// "/" -> "-.slice", the root.
func rootSlice(root string) (string, error) {
	r := strings.Trim(root, "/")
	if r == "" {
		return "-.slice", nil
	}
	if strings.ContainsAny(r, "/-") {
		return "", fmt.Errorf("cgroup root %q: under the systemd driver give one level without '-'", root)
	}
	return r + ".slice", nil
}

// startRootSlice makes the kubelet's cgroupRoot slice (the kubelet wants its
// cgroupRoot to exist, with the cpu, cpuset, memory, pids and hugetlb
// controllers: a slice below the root has them only when systemd enables
// them, which it does not for cpuset and hugetlb; "/" has them all).
func startRootSlice(root string) error {
	s, err := rootSlice(root)
	if err != nil || s == "-.slice" {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := (cgroup.Units{}).StartSlice(ctx, s, "e2e kubelet cgroup root"); err != nil {
		return fmt.Errorf("start slice %s: %w", s, err)
	}
	return nil
}

// stopRootSlice stops the cgroupRoot slice and every slice the kubelet made
// below it (kubepods and its QoS slices); for "/", kubepods.slice.
func stopRootSlice(root string) error {
	s, err := rootSlice(root)
	if err != nil {
		return err
	}
	if s == "-.slice" {
		s = "kubepods.slice"
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return (cgroup.Units{}).StopUnit(ctx, s)
}

// systemdPodCgroups are the kubelet's pod slices below its QoS slices.
func systemdPodCgroups(root string) []string {
	s, err := rootSlice(root)
	if err != nil {
		return nil
	}
	k := strings.TrimSuffix(s, ".slice") + "-kubepods"
	kubepods := filepath.Join(cgroup.Root, s, k+".slice")
	if s == "-.slice" {
		k = "kubepods"
		kubepods = filepath.Join(cgroup.Root, "kubepods.slice")
	}
	var out []string
	for _, pat := range []string{
		k + "-pod*.slice",
		k + "-burstable.slice/" + k + "-burstable-pod*.slice",
		k + "-besteffort.slice/" + k + "-besteffort-pod*.slice",
	} {
		m, _ := filepath.Glob(filepath.Join(kubepods, pat))
		out = append(out, m...)
	}
	return out
}
