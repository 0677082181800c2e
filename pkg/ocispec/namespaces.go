package ocispec

import (
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// nsInfo is the container's namespaces and which of the pod-level ones are
// not the host's.
type nsInfo struct {
	entries                []specs.LinuxNamespace
	ownNet, ownIPC, ownUTS bool
	// user: the container joins the pod's user namespace.
	user bool
}

// namespaces returns the container's namespaces. Network, IPC and UTS are
// the pod's as its controller says (Pod: a pinned path, a new one, or the
// node's). PID is the pod's shared one (POD), the container's own
// (CONTAINER), the node's (NODE, only in a pod on the node's), or the
// target container's (TARGET, Pod.PIDTarget). Mount is always new; cgroup
// is new unless the container is privileged.
func namespaces(in Input) (nsInfo, error) {
	var ns nsInfo
	add := func(t specs.LinuxNamespaceType, p string) {
		ns.entries = append(ns.entries, specs.LinuxNamespace{Type: t, Path: p})
	}
	user, err := userNamespace(in)
	if err != nil {
		return ns, err
	}
	if user {
		ns.user = true
		add(specs.UserNamespace, in.Pod.UserNamespace)
	}

	switch mode := pidMode(in); mode {
	case runtimeapi.NamespaceMode_POD:
		if !in.Pod.PID.Node {
			add(specs.PIDNamespace, in.Pod.PID.Path)
		}
	case runtimeapi.NamespaceMode_CONTAINER:
		add(specs.PIDNamespace, "")
	case runtimeapi.NamespaceMode_NODE:
		if !in.Pod.PID.Node {
			return ns, invalid("pid namespace mode NODE in a pod that does not use the node's pid namespace")
		}
	case runtimeapi.NamespaceMode_TARGET:
		target := in.Config.GetLinux().GetSecurityContext().GetNamespaceOptions().GetTargetId()
		if target == "" {
			return ns, invalid("pid namespace mode TARGET without a target_id")
		}
		if in.Pod.PIDTarget == "" {
			return ns, invalid("pid namespace mode TARGET (%q): the target's pid namespace is unknown", target)
		}
		add(specs.PIDNamespace, in.Pod.PIDTarget)
	default:
		return ns, invalid("unknown pid namespace mode %d", mode)
	}

	if !in.Pod.IPC.Node {
		ns.ownIPC = true
		add(specs.IPCNamespace, in.Pod.IPC.Path)
	}
	if !in.Pod.UTS.Node {
		ns.ownUTS = true
		add(specs.UTSNamespace, in.Pod.UTS.Path)
	}
	if !in.Pod.Network.Node {
		ns.ownNet = true
		add(specs.NetworkNamespace, in.Pod.Network.Path)
	}

	add(specs.MountNamespace, "")
	if !in.Config.GetLinux().GetSecurityContext().GetPrivileged() {
		add(specs.CgroupNamespace, "")
	}
	return ns, nil
}

// userNamespace tells whether the container joins its pod's user
// namespace. Its mode (the container's, as the kubelet repeats the pod's
// there, else the sandbox's) is POD or NODE; CONTAINER and TARGET are
// refused, as in containerd. POD needs the pod to have one, with the
// mappings the container's options name (if any); NODE needs the pod to
// have none.
func userNamespace(in Input) (bool, error) {
	opts := in.Config.GetLinux().GetSecurityContext().GetNamespaceOptions().GetUsernsOptions()
	if opts == nil {
		opts = in.Sandbox.GetLinux().GetSecurityContext().GetNamespaceOptions().GetUsernsOptions()
	}
	podHas := in.Pod.UserNamespace != ""
	switch opts.GetMode() {
	case runtimeapi.NamespaceMode_NODE:
		if len(opts.GetUids())+len(opts.GetGids()) > 0 {
			return false, invalid("user namespace mode NODE with id mappings")
		}
		if podHas {
			return false, invalid("user namespace mode NODE in a pod with a user namespace of its own")
		}
		return false, nil
	case runtimeapi.NamespaceMode_POD:
		if opts == nil {
			// No options at all (POD is the zero value): as the pod.
			return podHas, nil
		}
		if !podHas {
			return false, invalid("user namespace mode POD in a pod without a user namespace")
		}
		if !sameMappings(opts.GetUids(), in.Pod.UIDMappings) || !sameMappings(opts.GetGids(), in.Pod.GIDMappings) {
			return false, invalid("user namespace mappings %v/%v are not the pod's %v/%v", opts.GetUids(), opts.GetGids(), in.Pod.UIDMappings, in.Pod.GIDMappings)
		}
		return true, nil
	default:
		return false, invalid("user namespace mode %s is not supported (POD or NODE)", opts.GetMode())
	}
}

// sameMappings: the request's mappings are want, or none (the pod's then).
func sameMappings(got []*runtimeapi.IDMapping, want []specs.LinuxIDMapping) bool {
	if len(got) == 0 {
		return true
	}
	if len(got) != len(want) {
		return false
	}
	for i, m := range got {
		if m.GetContainerId() != want[i].ContainerID || m.GetHostId() != want[i].HostID || m.GetLength() != want[i].Size {
			return false
		}
	}
	return true
}

// pidMode is the container's mode (the kubelet sets CONTAINER there unless
// the pod shares its process namespace), else the sandbox's.
func pidMode(in Input) runtimeapi.NamespaceMode {
	if o := in.Config.GetLinux().GetSecurityContext().GetNamespaceOptions(); o != nil {
		return o.GetPid()
	}
	return in.Sandbox.GetLinux().GetSecurityContext().GetNamespaceOptions().GetPid()
}

// ipcSysctls are the sysctls of the IPC namespace runc accepts, besides
// fs.mqueue.*.
var ipcSysctls = map[string]bool{
	"kernel.msgmax":          true,
	"kernel.msgmnb":          true,
	"kernel.msgmni":          true,
	"kernel.sem":             true,
	"kernel.shmall":          true,
	"kernel.shmmax":          true,
	"kernel.shmmni":          true,
	"kernel.shm_rmid_forced": true,
}

// sysctls checks the pod's sysctls with runc's rules: IPC ones need the
// pod's own IPC namespace, net.* its own network namespace,
// kernel.domainname its own UTS namespace; any other is refused. Names in
// the slash form ("net/ipv4/ip_forward") are turned into the dotted one.
func sysctls(in map[string]string, ns nsInfo) (map[string]string, error) {
	if len(in) == 0 {
		return nil, nil
	}
	out := make(map[string]string, len(in))
	for name, v := range in {
		k := normalizeSysctl(name)
		var ok bool
		var why string
		switch {
		case ipcSysctls[k] || strings.HasPrefix(k, "fs.mqueue."):
			ok, why = ns.ownIPC, "the pod uses the host's IPC namespace"
		case strings.HasPrefix(k, "net."):
			ok, why = ns.ownNet, "the pod uses the host's network namespace"
		case k == "kernel.domainname":
			ok, why = ns.ownUTS, "the pod uses the host's UTS namespace"
		case k == "kernel.hostname":
			why = "the hostname comes from the pod's hostname"
		default:
			why = "it is not namespaced"
		}
		if !ok {
			return nil, invalid("sysctl %q is not allowed: %s", name, why)
		}
		out[k] = v
	}
	return out, nil
}

// normalizeSysctl turns "net/ipv4/conf/eth0.100/forwarding" into
// "net.ipv4.conf.eth0/100.forwarding", as the kubelet does: in the slash
// form, dots are part of names.
func normalizeSysctl(name string) string {
	i := strings.IndexAny(name, "./")
	if i < 0 || name[i] == '.' {
		return name
	}
	return strings.Map(func(r rune) rune {
		switch r {
		case '/':
			return '.'
		case '.':
			return '/'
		}
		return r
	}, name)
}
