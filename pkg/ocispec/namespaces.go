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
}

// namespaces returns the container's namespaces. Network, IPC and UTS are
// the pod's (its paths, or new ones when a path is empty) unless the
// sandbox's NamespaceOptions put them on the node; UTS follows the network,
// as in containerd (a hostNetwork pod has the node's hostname). PID is the
// pod's (POD), the container's own (CONTAINER), the host's (NODE) or, for
// TARGET, PIDNSPath, which the caller resolves to the target's. Mount is
// always new; cgroup is new unless the container is privileged.
func namespaces(in Input) (nsInfo, error) {
	var ns nsInfo
	if u := in.Config.GetLinux().GetSecurityContext().GetNamespaceOptions().GetUsernsOptions(); u != nil && u.GetMode() != runtimeapi.NamespaceMode_NODE {
		return ns, unsupported("user namespaces are not supported")
	}
	add := func(t specs.LinuxNamespaceType, p string) {
		ns.entries = append(ns.entries, specs.LinuxNamespace{Type: t, Path: p})
	}

	switch mode := pidMode(in); mode {
	case runtimeapi.NamespaceMode_POD:
		add(specs.PIDNamespace, in.PIDNSPath)
	case runtimeapi.NamespaceMode_CONTAINER:
		add(specs.PIDNamespace, "")
	case runtimeapi.NamespaceMode_NODE:
	case runtimeapi.NamespaceMode_TARGET:
		if in.PIDNSPath == "" {
			return ns, invalid("pid namespace mode TARGET (%q) without the target's namespace path",
				in.Config.GetLinux().GetSecurityContext().GetNamespaceOptions().GetTargetId())
		}
		add(specs.PIDNamespace, in.PIDNSPath)
	default:
		return ns, invalid("unknown pid namespace mode %d", mode)
	}

	switch mode := ipcMode(in); mode {
	case runtimeapi.NamespaceMode_NODE:
	case runtimeapi.NamespaceMode_POD, runtimeapi.NamespaceMode_CONTAINER:
		ns.ownIPC = true
		add(specs.IPCNamespace, in.IPCNSPath)
	default:
		return ns, invalid("unknown ipc namespace mode %d", mode)
	}

	switch mode := netMode(in); mode {
	case runtimeapi.NamespaceMode_NODE:
	case runtimeapi.NamespaceMode_POD, runtimeapi.NamespaceMode_CONTAINER:
		ns.ownNet, ns.ownUTS = true, true
		add(specs.UTSNamespace, in.UTSNSPath)
		add(specs.NetworkNamespace, in.NetNSPath)
	default:
		return ns, invalid("unknown network namespace mode %d", mode)
	}

	add(specs.MountNamespace, "")
	if !in.Config.GetLinux().GetSecurityContext().GetPrivileged() {
		add(specs.CgroupNamespace, "")
	}
	return ns, nil
}

// netMode and ipcMode are the sandbox's modes (the container's when no
// sandbox config is given); POD by default.
func netMode(in Input) runtimeapi.NamespaceMode {
	if in.Sandbox != nil {
		return in.Sandbox.GetLinux().GetSecurityContext().GetNamespaceOptions().GetNetwork()
	}
	return in.Config.GetLinux().GetSecurityContext().GetNamespaceOptions().GetNetwork()
}

func ipcMode(in Input) runtimeapi.NamespaceMode {
	if in.Sandbox != nil {
		return in.Sandbox.GetLinux().GetSecurityContext().GetNamespaceOptions().GetIpc()
	}
	return in.Config.GetLinux().GetSecurityContext().GetNamespaceOptions().GetIpc()
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
