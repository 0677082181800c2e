package ocispec

import (
	"encoding/json"
	"path"
	"slices"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	imagespec "github.com/opencontainers/image-spec/specs-go/v1"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// fuzzIDMap is the user namespace mapping of the fuzzed pods that have one.
var fuzzIDMap = []specs.LinuxIDMapping{{ContainerID: 0, HostID: 100000, Size: 65536}}

// fuzzFacts is what a controller says of a pod, chosen by the bits of sel:
// the node's network (and UTS), the node's IPC, the pid namespace (pinned,
// the node's, none shared, pinned with a TARGET container), a user
// namespace, a VM pod (mounts shared under a guest directory), the pod's
// files, the OOM floor.
func fuzzFacts(sel uint8) PodFacts {
	f := PodFacts{
		RootfsPath:     "/var/lib/aurae-cri/containers/ctr1/rootfs",
		Network:        Namespace{Path: "/var/lib/aurae/pods/pod1/ns/net"},
		IPC:            Namespace{Path: "/var/lib/aurae/pods/pod1/ns/ipc"},
		UTS:            Namespace{Path: "/var/lib/aurae/pods/pod1/ns/uts"},
		CgroupParent:   "/kubepods/burstable/podabc/pod1",
		OOMScoreAdjMin: -999,
	}
	if sel&1 != 0 {
		f.Network, f.UTS = Namespace{Node: true}, Namespace{Node: true}
	}
	if sel&2 != 0 {
		f.IPC = Namespace{Node: true}
	}
	switch sel >> 2 & 3 {
	case 0:
		f.PID = Namespace{Path: "/var/lib/aurae/pods/pod1/ns/pid"}
	case 1:
		f.PID = Namespace{Node: true}
	case 2: // no shared pid namespace
	case 3:
		f.PID = Namespace{Path: "/var/lib/aurae/pods/pod1/ns/pid"}
		f.PIDTarget = "/proc/4242/ns/pid"
	}
	if sel&16 != 0 {
		f.UserNamespace = "/var/lib/aurae/pods/pod1/ns/user"
		f.UIDMappings, f.GIDMappings = fuzzIDMap, fuzzIDMap
	}
	if sel&32 != 0 {
		f.RootfsPath = "/run/aurae/shared/ctr1/rootfs"
		f.MountSources = map[string]string{
			"/var/lib/kubelet/pods/abc/volumes/kubernetes.io~projected/kube-api-access": "/run/aurae/shared/m0",
			"/var/lib/kubelet/pods/abc/etc-hosts":                                       "/run/aurae/shared/m1",
			"/var/lib/kubelet/pods/abc/containers/app/0123":                             "/run/aurae/shared/m2",
		}
	}
	if sel&64 != 0 {
		f.ResolvConfPath = "/var/lib/aurae/pods/pod1/resolv.conf"
		f.HostsPath = "/var/lib/aurae/pods/pod1/hosts"
		f.HostnamePath = "/var/lib/aurae/pods/pod1/hostname"
		f.ShmPath = "/var/lib/aurae/pods/pod1/shm"
	}
	if sel&128 != 0 {
		f.OOMScoreAdjMin = 0
	}
	return f
}

// FuzzGenerate generates the spec of a container from a ContainerConfig
// and a PodSandboxConfig decoded from the fuzzer's bytes (plus a mount and
// a user name from its strings), an image config from its JSON and the
// pod's facts chosen by sel. Refusals must wrap a kind; an accepted config
// must yield a spec that keeps the container in its pod: its cgroup under
// the pod's, only the pod's namespaces (or new ones, or the node's where
// the pod uses the node's), mounts at clean absolute destinations.
func FuzzGenerate(f *testing.F) {
	f.Fuzz(func(t *testing.T, ctrData, sbData, imageJSON []byte, sel uint8, mountHost, mountCtr, username string) {
		cfg := &runtimeapi.ContainerConfig{}
		_ = proto.Unmarshal(ctrData, cfg)
		sb := &runtimeapi.PodSandboxConfig{}
		_ = proto.Unmarshal(sbData, sb)
		var img imagespec.ImageConfig
		_ = json.Unmarshal(imageJSON, &img)
		if mountHost != "" || mountCtr != "" {
			cfg.Mounts = append(cfg.Mounts, &runtimeapi.Mount{HostPath: mountHost, ContainerPath: mountCtr})
		}
		if username != "" {
			if cfg.Linux == nil {
				cfg.Linux = &runtimeapi.LinuxContainerConfig{}
			}
			if cfg.Linux.SecurityContext == nil {
				cfg.Linux.SecurityContext = &runtimeapi.LinuxContainerSecurityContext{}
			}
			cfg.Linux.SecurityContext.RunAsUsername = username
		}
		// A device's host path comes from a device plugin, which the node
		// trusts; a directory there is walked. Kept under /dev here so that
		// a fuzzed "/" does not walk the whole machine.
		for _, d := range cfg.GetDevices() {
			if !strings.HasPrefix(path.Clean(d.HostPath), "/dev/") {
				d.HostPath = "/dev/" + strings.ReplaceAll(d.HostPath, "/", "_")
			}
		}
		in := Input{
			ID: "ctr1", SandboxID: "pod1",
			Config: cfg, Sandbox: sb, Image: img,
			Pod:            fuzzFacts(sel),
			RootFS:         testRootFS(),
			SwapAccounting: true,
			Host:           HostFeatures{RecursiveReadOnly: true},
		}
		s, err := Generate(in)
		if err != nil {
			if !errdefs.IsInvalidArgument(err) && !errdefs.IsNotImplemented(err) && !errdefs.IsFailedPrecondition(err) {
				t.Fatalf("refusal of no clear kind (it would reach the kubelet as Unknown): %v", err)
			}
			return
		}
		checkGenerated(t, in, s)
	})
}

// checkGenerated checks the invariants of a spec Generate made of in.
func checkGenerated(t *testing.T, in Input, s *specs.Spec) {
	t.Helper()
	pod := in.Pod
	if want := pod.CgroupParent + "/" + in.ID; s.Linux.CgroupsPath != want {
		t.Fatalf("cgroupsPath %q, want %q", s.Linux.CgroupsPath, want)
	}
	if s.Root == nil || s.Root.Path != pod.RootfsPath {
		t.Fatalf("root %+v, want %s", s.Root, pod.RootfsPath)
	}
	if s.Process.Terminal != in.Config.GetTty() {
		t.Fatalf("terminal %t for tty %t", s.Process.Terminal, in.Config.GetTty())
	}
	if adj := s.Process.OOMScoreAdj; adj == nil || *adj < pod.OOMScoreAdjMin || *adj > 1000 {
		t.Fatalf("oomScoreAdj %v with a floor of %d", adj, pod.OOMScoreAdjMin)
	}
	privileged := in.Config.GetLinux().GetSecurityContext().GetPrivileged()
	if privileged && !in.Sandbox.GetLinux().GetSecurityContext().GetPrivileged() {
		t.Fatal("a privileged container accepted in a pod that is not")
	}
	checkGeneratedNamespaces(t, pod, s.Linux.Namespaces, privileged)
	if s.Hostname != "" && pod.UTS.Node {
		t.Fatalf("hostname %q set in the node's UTS namespace", s.Hostname)
	}
	for k := range s.Linux.Sysctl {
		if strings.HasPrefix(k, "net.") && pod.Network.Node || (ipcSysctls[k] || strings.HasPrefix(k, "fs.mqueue.")) && pod.IPC.Node || !strings.HasPrefix(k, "net.") && !ipcSysctls[k] && !strings.HasPrefix(k, "fs.mqueue.") && k != "kernel.domainname" {
			t.Fatalf("sysctl %q accepted in pod %+v", k, pod)
		}
	}

	shared := map[string]bool{pod.ResolvConfPath: true, pod.HostsPath: true, pod.HostnamePath: true, pod.ShmPath: true, devShm: true}
	for _, v := range pod.MountSources {
		shared[v] = true
	}
	for _, m := range s.Mounts {
		if !cleanAbs(m.Destination) || m.Destination == "/" {
			t.Fatalf("mount destination %q", m.Destination)
		}
		if m.Type != "bind" {
			continue
		}
		if !cleanAbs(m.Source) {
			t.Fatalf("bind mount source %q", m.Source)
		}
		if pod.MountSources != nil && !shared[m.Source] {
			t.Fatalf("bind mount of %q in a VM pod: not shared with it", m.Source)
		}
		if len(m.UIDMappings)+len(m.GIDMappings) > 0 && (pod.UserNamespace == "" || !slices.Equal(m.UIDMappings, pod.UIDMappings) || !slices.Equal(m.GIDMappings, pod.GIDMappings)) {
			t.Fatalf("mount %s id-mapped with %v/%v in pod %+v", m.Destination, m.UIDMappings, m.GIDMappings, pod)
		}
	}

	md := in.Sandbox.GetMetadata()
	for k, v := range map[string]string{
		AnnotationContainerType: ContainerTypeContainer, AnnotationSandboxID: in.SandboxID,
		AnnotationSandboxName: md.GetName(), AnnotationSandboxNamespace: md.GetNamespace(), AnnotationSandboxUID: md.GetUid(),
		AnnotationContainerName: in.Config.GetMetadata().GetName(),
	} {
		if s.Annotations[k] != v {
			t.Fatalf("annotation %s = %q, want %q", k, s.Annotations[k], v)
		}
	}
	if _, err := json.Marshal(s); err != nil {
		t.Fatalf("marshal the spec: %v", err)
	}
}

// checkGeneratedNamespaces: each namespace is the pod's, a new one, or (no
// entry) the node's where the pod uses the node's; pid may be a TARGET's.
func checkGeneratedNamespaces(t *testing.T, pod PodFacts, nss []specs.LinuxNamespace, privileged bool) {
	t.Helper()
	got := map[specs.LinuxNamespaceType]string{}
	for _, ns := range nss {
		if _, dup := got[ns.Type]; dup {
			t.Fatalf("two %s namespaces in %v", ns.Type, nss)
		}
		got[ns.Type] = ns.Path
	}
	exactly := func(typ specs.LinuxNamespaceType, n Namespace) {
		p, ok := got[typ]
		switch {
		case n.Node && ok:
			t.Fatalf("%s namespace %q in a pod on the node's", typ, p)
		case !n.Node && (!ok || p != n.Path):
			t.Fatalf("%s namespace %q (present %t), want the pod's %q", typ, p, ok, n.Path)
		}
	}
	exactly(specs.NetworkNamespace, pod.Network)
	exactly(specs.IPCNamespace, pod.IPC)
	exactly(specs.UTSNamespace, pod.UTS)
	exactly(specs.UserNamespace, Namespace{Node: pod.UserNamespace == "", Path: pod.UserNamespace})
	if p, ok := got[specs.PIDNamespace]; ok {
		if p != "" && p != pod.PID.Path && p != pod.PIDTarget {
			t.Fatalf("pid namespace %q is not the pod's", p)
		}
	} else if !pod.PID.Node {
		t.Fatal("the node's pid namespace in a pod that does not use it")
	}
	if p, ok := got[specs.MountNamespace]; !ok || p != "" {
		t.Fatalf("mount namespace %q (present %t), want a new one", p, ok)
	}
	if p, ok := got[specs.CgroupNamespace]; ok && p != "" || !ok && !privileged {
		t.Fatalf("cgroup namespace %q (present %t) of a container privileged %t", p, ok, privileged)
	}
	for typ := range got {
		switch typ {
		case specs.NetworkNamespace, specs.IPCNamespace, specs.UTSNamespace, specs.UserNamespace, specs.PIDNamespace, specs.MountNamespace, specs.CgroupNamespace:
		default:
			t.Fatalf("namespace of type %s", typ)
		}
	}
}

// cleanAbs: p is absolute, clean (no "..", ".", "//") and has no NUL.
func cleanAbs(p string) bool {
	return path.IsAbs(p) && path.Clean(p) == p && !strings.ContainsRune(p, 0)
}
