package ocispec

import (
	"strconv"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Namespace says where a container's namespace of one type comes from.
type Namespace struct {
	// Node keeps the container in the runtime's own namespace (the node's,
	// or a VM guest's): the spec has no entry for it.
	Node bool
	// Path is the pod's pinned namespace the container joins; "" (and not
	// Node) makes a new one.
	Path string
}

// PodFacts is what the pod's controller says about the pod a container
// runs in, as the OCI runtime that runs the container sees it: the host's
// paths for a native pod, the guest's for a VM pod. Generate takes every
// pod-level part of the spec from it.
type PodFacts struct {
	// Network, IPC and UTS are the pod's namespaces. PID is the pod's
	// shared pid namespace, which a container joins when its pid mode is
	// POD; a container whose mode is CONTAINER gets a new one.
	Network, IPC, UTS, PID Namespace
	// UserNamespace is the pod's pinned user namespace (hostUsers: false),
	// which its containers join; "" for a pod in the node's. UIDMappings
	// and GIDMappings are its mappings: every bind mount of such a
	// container is id-mapped with them.
	UserNamespace            string
	UIDMappings, GIDMappings []specs.LinuxIDMapping
	// PIDTarget is the pid namespace of the container that a container
	// with pid mode TARGET joins (its target_id), resolved by the controller.
	PIDTarget string
	// Hostname is the pod's hostname, set in containers of the pod's own
	// UTS namespace; "" takes the sandbox config's (then the node's).
	Hostname string
	// CgroupParent is the pod's cgroup in cgroupfs form ("/aurae/pods/<pod>");
	// a container's linux.cgroupsPath is CgroupParent/<container id>.
	CgroupParent string
	// SystemdSlice, under the systemd cgroup driver, is the pod's slice
	// unit: a container's linux.cgroupsPath is then "<slice>:aurae:<id>"
	// (runc --systemd-cgroup makes the scope aurae-<id>.scope in it), and
	// CgroupParent only says where that is.
	SystemdSlice string
	// OOMScoreAdjMin is the oom_score_adj of the daemon that starts the
	// container's processes: a container's is clamped to no lower
	// (containerd's restrict_oom_score_adj).
	OOMScoreAdjMin int
	// Files of the pod bind-mounted into each container at /etc/resolv.conf,
	// /etc/hosts and /etc/hostname (unless it mounts something there
	// itself); "" mounts none. ShmPath is the pod's /dev/shm, bind-mounted
	// instead of a private tmpfs.
	ResolvConfPath, HostsPath, HostnamePath, ShmPath string
	// RootfsPath is where the container's prepared rootfs is: root.path.
	RootfsPath string
	// OCIVersion is the runtime-spec version the pod's OCI runtime reads
	// (its auraed says); the spec's ociVersion is the older of it and the
	// version this package writes (specs.Version). "": specs.Version.
	OCIVersion string
	// MountSources maps the host paths of the request's mounts to where the
	// runtime sees them (a VM guest sees them under its shared dir); nil
	// means the same paths. A host path missing from a non-nil map is an
	// error: the controller did not share it.
	MountSources map[string]string
	// DefaultPersonality sets linux.personality to Linux's default
	// (domain LINUX, no flags): the runtime that starts the container may
	// itself run without address space randomization (a TCG guest's, see
	// hypervisor.TCGKernelArg), which the container's processes must not
	// inherit.
	DefaultPersonality bool
}

// cgroupsPath is the container's linux.cgroupsPath.
func (f PodFacts) cgroupsPath(id string) string {
	if f.SystemdSlice != "" {
		return f.SystemdSlice + ":aurae:" + id
	}
	if f.CgroupParent == "" {
		return ""
	}
	return f.CgroupParent + "/" + id
}

// ociVersion is the spec's ociVersion for a runtime that reads runtime
// version rt: rt when it is an older X.Y.Z than specs.Version (Debian 12's
// crun refuses any other than 1.0), else specs.Version.
func ociVersion(rt string) string {
	a, okA := semver(rt)
	b, okB := semver(specs.Version)
	if !okA || !okB {
		return specs.Version
	}
	for i := range a {
		if a[i] != b[i] {
			if a[i] < b[i] {
				return rt
			}
			return specs.Version
		}
	}
	return specs.Version
}

// semver reads "X.Y.Z" (a "-suffix" after Z is ignored).
func semver(v string) ([3]int, bool) {
	var out [3]int
	v, _, _ = strings.Cut(v, "-")
	parts := strings.Split(v, ".")
	if len(parts) != 3 {
		return out, false
	}
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 {
			return out, false
		}
		out[i] = n
	}
	return out, true
}
