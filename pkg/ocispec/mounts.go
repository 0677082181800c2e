package ocispec

import (
	"errors"
	"fmt"
	"path"
	"slices"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Destinations of the pod files a container gets.
const (
	etcHostname = "/etc/hostname"
	etcHosts    = "/etc/hosts"
	resolvConf  = "/etc/resolv.conf"
	devShm      = "/dev/shm"
)

// defaultMounts are containerd's default mounts without /run (its CRI drops
// it) plus the cgroup filesystem; a privileged container gets /sys and
// /sys/fs/cgroup read-write.
func defaultMounts(privileged bool) []specs.Mount {
	sysMode, cgroupMode := []string{"ro"}, "ro"
	if privileged {
		sysMode, cgroupMode = nil, "rw"
	}
	return []specs.Mount{
		{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{"nosuid", "noexec", "nodev"}},
		{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
		{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"}},
		{Destination: devShm, Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
		{Destination: "/dev/mqueue", Type: "mqueue", Source: "mqueue", Options: []string{"nosuid", "noexec", "nodev"}},
		{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: append([]string{"nosuid", "noexec", "nodev"}, sysMode...)},
		{Destination: "/sys/fs/cgroup", Type: "cgroup", Source: "cgroup", Options: []string{"nosuid", "noexec", "nodev", "relatime", cgroupMode}},
	}
}

// setMounts sets the container's mounts: the defaults, the pod's files and
// /dev/shm, and the request's mounts. A mount of the request replaces a
// default or pod mount at the same destination, a request mount at /dev
// removes every default under /dev, and the result is sorted by depth
// (stable) so that a parent is mounted before its children.
func setMounts(in Input, s *specs.Spec) error {
	sc := in.Config.GetLinux().GetSecurityContext()
	readonlyFiles := in.RootfsReadonly || sc.GetReadonlyRootfs()

	requested := make(map[string]bool, len(in.Config.GetMounts()))
	var own []specs.Mount
	for _, m := range in.Config.GetMounts() {
		om, err := criMount(m, in.Host.RecursiveReadOnly, in.ImageVolumes)
		if err != nil {
			return err
		}
		if len(m.GetUidMappings())+len(m.GetGidMappings()) > 0 {
			// The pod's own mappings are what every mount gets anyway.
			if in.Pod.UserNamespace == "" || !sameMappings(m.GetUidMappings(), in.Pod.UIDMappings) || !sameMappings(m.GetGidMappings(), in.Pod.GIDMappings) {
				return unsupported("mount at %q: id-mapped mounts other than with the pod's user namespace mappings are not supported", om.Destination)
			}
		}
		if in.Pod.MountSources != nil {
			src, ok := in.Pod.MountSources[om.Source]
			if !ok {
				return invalid("mount at %q: host path %q is not shared with the pod", om.Destination, om.Source)
			}
			om.Source = src
		}
		if requested[om.Destination] {
			return invalid("two mounts at %q", om.Destination)
		}
		requested[om.Destination] = true
		own = append(own, om)
		switch m.GetPropagation() {
		case runtimeapi.MountPropagation_PROPAGATION_BIDIRECTIONAL:
			s.Linux.RootfsPropagation = "rshared"
		case runtimeapi.MountPropagation_PROPAGATION_HOST_TO_CONTAINER:
			if s.Linux.RootfsPropagation != "rshared" {
				s.Linux.RootfsPropagation = "rslave"
			}
		}
	}

	var pod []specs.Mount
	addPod := func(dst, src string, readonly bool) {
		if src == "" || requested[dst] {
			return
		}
		pod = append(pod, bindMount(src, dst, "rprivate", readonly))
	}
	addPod(etcHostname, in.Pod.HostnamePath, readonlyFiles)
	addPod(etcHosts, in.Pod.HostsPath, readonlyFiles)
	addPod(resolvConf, in.Pod.ResolvConfPath, readonlyFiles)
	shm := in.Pod.ShmPath
	if shm == "" && in.Pod.IPC.Node {
		shm = devShm // the host's, as containerd does for host IPC
	}
	addPod(devShm, shm, false)

	replaced := make(map[string]bool, len(requested)+len(pod))
	for dst := range requested {
		replaced[dst] = true
	}
	for _, m := range pod {
		replaced[m.Destination] = true
	}
	var mounts []specs.Mount
	for _, m := range defaultMounts(sc.GetPrivileged()) {
		if replaced[m.Destination] || (requested["/dev"] && strings.HasPrefix(m.Destination, "/dev/")) {
			continue
		}
		mounts = append(mounts, m)
	}
	mounts = append(append(mounts, pod...), own...)
	slices.SortStableFunc(mounts, func(a, b specs.Mount) int {
		return depth(a.Destination) - depth(b.Destination)
	})
	if in.Pod.UserNamespace != "" {
		// In the pod's user namespace, the host's files would belong to
		// no one; id-mapped, the host's ids 0.. are the pod's (its root
		// owns what host root owns), as containerd and CRI-O map volumes.
		// An image volume's source is id-mapped already (its layers, as
		// the rootfs's: overlayfs itself cannot be).
		imageSources := map[string]bool{}
		for _, src := range in.ImageVolumes {
			imageSources[src] = true
		}
		for i := range mounts {
			if mounts[i].Type == "bind" && !imageSources[mounts[i].Source] {
				mounts[i].UIDMappings = in.Pod.UIDMappings
				mounts[i].GIDMappings = in.Pod.GIDMappings
			}
		}
	}
	s.Mounts = mounts
	return nil
}

// criMount validates a mount of the request and turns it into a bind mount.
// A recursive read-only mount (runc's "rro", which needs mount_setattr(2):
// rro says whether the host has it) must be read-only and private, as the
// CRI requires. An image volume (Mount.image) is mounted from its host
// source in images (by container path): always read-only, as the CRI
// says of image mounts.
func criMount(m *runtimeapi.Mount, rro bool, images map[string]string) (specs.Mount, error) {
	dst, src := m.GetContainerPath(), m.GetHostPath()
	if err := validContainerPath(dst); err != nil {
		return specs.Mount{}, invalid("mount of %q: %w", src, err)
	}
	if m.GetImage().GetImage() != "" {
		if src != "" {
			return specs.Mount{}, invalid("mount at %q: host_path %q and image %q are exclusive", dst, src, m.GetImage().GetImage())
		}
		if !m.GetReadonly() {
			return specs.Mount{}, invalid("mount at %q: image volume %q must be read-only", dst, m.GetImage().GetImage())
		}
		if src = images[path.Clean(dst)]; src == "" {
			return specs.Mount{}, invalid("mount at %q: image volume %q was not prepared", dst, m.GetImage().GetImage())
		}
	} else if m.GetImageSubPath() != "" {
		return specs.Mount{}, invalid("mount at %q: image_sub_path %q without an image", dst, m.GetImageSubPath())
	}
	if src == "" || !path.IsAbs(src) {
		return specs.Mount{}, invalid("mount at %q: host path %q is not absolute", dst, src)
	}
	if strings.ContainsRune(src, 0) {
		return specs.Mount{}, invalid("mount at %q: host path %q contains NUL", dst, src)
	}
	if m.GetRecursiveReadOnly() {
		if !m.GetReadonly() {
			return specs.Mount{}, invalid("mount at %q: recursive_read_only needs readonly", dst)
		}
		if m.GetPropagation() != runtimeapi.MountPropagation_PROPAGATION_PRIVATE {
			return specs.Mount{}, invalid("mount at %q: recursive_read_only needs private propagation, not %s", dst, m.GetPropagation())
		}
		if !rro {
			return specs.Mount{}, unsupported("mount at %q: recursive read-only mounts need mount_setattr(2), which this kernel lacks", dst)
		}
	}
	propagation := "rprivate"
	switch m.GetPropagation() {
	case runtimeapi.MountPropagation_PROPAGATION_PRIVATE:
	case runtimeapi.MountPropagation_PROPAGATION_HOST_TO_CONTAINER:
		propagation = "rslave"
	case runtimeapi.MountPropagation_PROPAGATION_BIDIRECTIONAL:
		propagation = "rshared"
	default:
		return specs.Mount{}, invalid("mount at %q: unknown propagation %d", dst, m.GetPropagation())
	}
	// SelinuxRelabel: see checkSELinux.
	om := bindMount(path.Clean(src), path.Clean(dst), propagation, m.GetReadonly())
	if m.GetRecursiveReadOnly() {
		om.Options = append(om.Options, "rro")
	}
	for _, o := range m.GetMountOptions() {
		if !slices.Contains(mountOptions, o) {
			return specs.Mount{}, invalid("mount at %q: mount option %q is not supported (only %s)", dst, o, strings.Join(mountOptions, ", "))
		}
		if !slices.Contains(om.Options, o) {
			om.Options = append(om.Options, o)
		}
	}
	return om, nil
}

// mountOptions are the Mount.mount_options a bind mount may take.
var mountOptions = []string{"noexec", "nosuid", "nodev", "noatime", "nodiratime", "relatime", "strictatime"}

// bindMount is a recursive bind mount, which runc makes for a file source
// as well as for a directory.
func bindMount(src, dst, propagation string, readonly bool) specs.Mount {
	mode := "rw"
	if readonly {
		mode = "ro"
	}
	return specs.Mount{Destination: dst, Type: "bind", Source: src, Options: []string{"rbind", propagation, mode}}
}

// validContainerPath accepts an absolute path below "/" with no ".."
// element (a path that could climb out of the rootfs before runc's checks).
func validContainerPath(p string) error {
	if p == "" || !path.IsAbs(p) {
		return fmt.Errorf("container path %q is not absolute", p)
	}
	if slices.Contains(strings.Split(p, "/"), "..") {
		return fmt.Errorf("container path %q contains \"..\"", p)
	}
	if strings.ContainsRune(p, 0) {
		return fmt.Errorf("container path %q contains NUL", p)
	}
	if path.Clean(p) == "/" {
		return errors.New("container path \"/\" is the rootfs")
	}
	return nil
}

// depth is the number of elements of a clean absolute path; "/" has none.
func depth(p string) int {
	p = path.Clean(p)
	if p == "/" {
		return 0
	}
	return strings.Count(p, "/")
}
