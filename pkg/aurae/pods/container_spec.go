package pods

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	podsv0 "github.com/aurae-runtime/aurae-cri/api/pods/v0"
)

// checkSpec decodes a container's spec and checks that it stays inside its
// pod; auraed runs it as it is, it does not rewrite it (the client's
// ocispec made it whole from the pod's AllocateResponse). Refused, with
// InvalidArgument: a spec that joins a namespace other than the pod's
// (or, for pid, than a running container's of the same pod), stays in
// the node's namespace of a type the pod does not share with the node, or
// names another cgroup than /<pod cgroup>/<id>; an oomScoreAdj below
// auraed's own; a terminal that is not the request's tty.
func (s *Service) checkSpec(p *pod, req *podsv0.Container) (*specs.Spec, error) {
	var sp specs.Spec
	if err := json.Unmarshal(req.GetOciSpec(), &sp); err != nil {
		return nil, fmt.Errorf("OCI spec: %w: %w", err, errdefs.ErrInvalidArgument)
	}
	if req.GetMountPodFiles() {
		return nil, invalidSpec("mount_pod_files is not supported: the spec mounts the pod's files (AllocateResponse's paths)")
	}
	if sp.Process == nil || len(sp.Process.Args) == 0 {
		return nil, invalidSpec("no process args")
	}
	if sp.Root == nil || sp.Root.Path == "" {
		return nil, invalidSpec("no root.path")
	}
	if err := validPath("root.path", sp.Root.Path); err != nil {
		return nil, err
	}
	if rp := req.GetRootfsPath(); rp != "" && rp != sp.Root.Path {
		return nil, invalidSpec("rootfs_path %q is not root.path %q", rp, sp.Root.Path)
	}
	for _, m := range sp.Mounts {
		if err := validMount(m); err != nil {
			return nil, err
		}
	}
	if sp.Process.Terminal != req.GetTty() {
		return nil, invalidSpec("process.terminal is %t but tty is %t", sp.Process.Terminal, req.GetTty())
	}
	if sp.Linux == nil {
		return nil, invalidSpec("no linux section")
	}
	if _, want := containerCgroup(p, req.GetId()); sp.Linux.CgroupsPath != want {
		return nil, invalidSpec("linux.cgroupsPath %q is not the container's cgroup in its pod (%q)", sp.Linux.CgroupsPath, want)
	}
	if adj := sp.Process.OOMScoreAdj; adj != nil && *adj < int(s.oomFloor) {
		return nil, invalidSpec("process.oomScoreAdj %d is below auraed's own (%d)", *adj, s.oomFloor)
	}
	if err := s.checkNamespaces(p, sp.Linux.Namespaces); err != nil {
		return nil, err
	}
	if err := checkIDMappings(p, &sp); err != nil {
		return nil, err
	}
	return &sp, nil
}

// checkIDMappings: in a pod with a user namespace, the spec's mappings (if
// any: runc reads them from the namespace it joins) and those of its
// id-mapped mounts are the pod's; in a pod without one, no mount is
// id-mapped (it would give the container's users files of the host's).
func checkIDMappings(p *pod, sp *specs.Spec) error {
	u := p.spec.GetUserNamespace()
	if u == nil {
		for _, m := range sp.Mounts {
			if len(m.UIDMappings)+len(m.GIDMappings) > 0 {
				return invalidSpec("mount %s is id-mapped in a pod without a user namespace", m.Destination)
			}
		}
		return nil
	}
	uids, gids := sysProcIDMaps(u.GetUidMappings()), sysProcIDMaps(u.GetGidMappings())
	same := func(got []specs.LinuxIDMapping, want []syscall.SysProcIDMap) bool {
		return slices.EqualFunc(got, want, func(a specs.LinuxIDMapping, b syscall.SysProcIDMap) bool {
			return int(a.ContainerID) == b.ContainerID && int(a.HostID) == b.HostID && int(a.Size) == b.Size
		})
	}
	if len(sp.Linux.UIDMappings)+len(sp.Linux.GIDMappings) > 0 && (!same(sp.Linux.UIDMappings, uids) || !same(sp.Linux.GIDMappings, gids)) {
		return invalidSpec("linux.uidMappings/gidMappings are not the pod's user namespace's")
	}
	for _, m := range sp.Mounts {
		if len(m.UIDMappings)+len(m.GIDMappings) > 0 && (!same(m.UIDMappings, uids) || !same(m.GIDMappings, gids)) {
			return invalidSpec("mount %s is id-mapped with other mappings than the pod's user namespace's", m.Destination)
		}
	}
	return nil
}

// checkNamespaces accepts, per type: the pod's pinned namespace; a new one
// ("" path) for any type but a pod's shared pid namespace; for pid, the
// namespace of a running container of the same pod (/proc/<pid>/ns/pid,
// pid mode TARGET); no entry (the node's) only where the pod uses the
// node's. The mount namespace is always new.
func (s *Service) checkNamespaces(p *pod, nss []specs.LinuxNamespace) error {
	pinned := map[specs.LinuxNamespaceType]string{
		specs.NetworkNamespace: p.paths.GetNetworkNamespacePath(),
		specs.IPCNamespace:     p.paths.GetIpcNamespacePath(),
		specs.UTSNamespace:     p.paths.GetUtsNamespacePath(),
		specs.PIDNamespace:     p.paths.GetPidNamespacePath(),
		specs.UserNamespace:    p.paths.GetUserNamespacePath(),
	}
	node := podsv0.NamespaceMode_NAMESPACE_MODE_NODE
	mayStayOnNode := map[specs.LinuxNamespaceType]bool{
		specs.NetworkNamespace: p.spec.GetNamespaces().GetNetwork() == node,
		specs.UTSNamespace:     !p.ownsUTS(),
		specs.IPCNamespace:     p.spec.GetNamespaces().GetIpc() == node,
		specs.PIDNamespace:     p.spec.GetNamespaces().GetPid() == node,
		specs.CgroupNamespace:  true, // a privileged container sees the cgroup tree
		specs.UserNamespace:    !p.ownsUser(),
		specs.TimeNamespace:    true,
	}
	seen := map[specs.LinuxNamespaceType]bool{}
	for _, ns := range nss {
		if seen[ns.Type] {
			return invalidSpec("two %s namespaces", ns.Type)
		}
		seen[ns.Type] = true
		if ns.Path == "" {
			if ns.Type == specs.PIDNamespace && p.ownsPID() {
				return invalidSpec("a new pid namespace in a pod that shares its pid namespace")
			}
			if ns.Type == specs.UserNamespace && p.ownsUser() {
				return invalidSpec("a new user namespace in a pod that has its own")
			}
			continue
		}
		if want, ok := pinned[ns.Type]; ok && want != "" && ns.Path == want {
			continue
		}
		if ns.Type == specs.PIDNamespace && s.isContainerPIDNamespace(p.spec.GetId(), ns.Path) {
			continue
		}
		return invalidSpec("%s namespace %q is not one of its pod's", ns.Type, ns.Path)
	}
	for t, ok := range mayStayOnNode {
		if !seen[t] && !ok {
			return invalidSpec("no %s namespace: the pod does not use the node's", t)
		}
	}
	if !seen[specs.MountNamespace] {
		return invalidSpec("no mount namespace")
	}
	return nil
}

// isContainerPIDNamespace tells whether path is /proc/<pid>/ns/pid of the
// init of a running container of the pod.
func (s *Service) isContainerPIDNamespace(podID, path string) bool {
	rest, ok := strings.CutPrefix(path, "/proc/")
	if !ok {
		return false
	}
	pidStr, ok := strings.CutSuffix(rest, "/ns/pid")
	if !ok {
		return false
	}
	pid, err := strconv.Atoi(pidStr)
	if err != nil || pid <= 0 || strconv.Itoa(pid) != pidStr {
		return false
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	for _, c := range s.ctrs {
		if c.podID != podID || c.reserved() {
			continue
		}
		if r := c.record(); r.State == stateRunning && r.Pid == pid {
			return true
		}
	}
	return false
}

// ownPIDNamespace: the container is the init of a pid namespace of its
// own (stopping it ends every process in it).
func ownPIDNamespace(sp *specs.Spec) bool {
	for _, ns := range sp.Linux.Namespaces {
		if ns.Type == specs.PIDNamespace {
			return ns.Path == ""
		}
	}
	return false
}

func invalidSpec(format string, args ...any) error {
	return fmt.Errorf("OCI spec: "+format+": %w", append(args, errdefs.ErrInvalidArgument)...)
}

func validMount(m specs.Mount) error {
	if !filepath.IsAbs(m.Destination) {
		return fmt.Errorf("mount destination %q is not absolute: %w", m.Destination, errdefs.ErrInvalidArgument)
	}
	for _, seg := range strings.Split(m.Destination, "/") {
		if seg == ".." {
			return fmt.Errorf("mount destination %q contains \"..\": %w", m.Destination, errdefs.ErrInvalidArgument)
		}
	}
	if m.Type == "bind" || slices.Contains(m.Options, "bind") || slices.Contains(m.Options, "rbind") {
		return validPath("bind mount source", m.Source)
	}
	return nil
}
