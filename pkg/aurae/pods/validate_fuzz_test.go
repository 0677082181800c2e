package pods

import (
	"path"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/proto"

	podsv0 "github.com/aurae-runtime/aurae-cri/api/pods/v0"
)

// The fuzz targets of auraed's Pod service request checks: Allocate's pod
// (validPod) and Start's container (validContainer, then checkSpec of its
// OCI spec against an allocated pod). They run without root and touch
// nothing: the pods are fixtures, as Allocate would have recorded them.
// Seeds: testdata/fuzz/<target>/; `make fuzz` runs them.

const fuzzStateDir = "/var/lib/aurae/pods-state"

func requireInvalid(t *testing.T, err error) {
	t.Helper()
	if !errdefs.IsInvalidArgument(err) {
		t.Fatalf("refusal that is not InvalidArgument: %v", err)
	}
}

// FuzzValidPod checks Allocate's pods, decoded from the fuzzer's bytes with
// the id, cgroup parent and hostname from its strings: what is accepted
// names a cgroup and a directory right below auraed's own, and the
// namespaces, sysctls and DNS entries a pod can have.
func FuzzValidPod(f *testing.F) {
	s := &Service{cfg: Config{StateDir: fuzzStateDir, CgroupRoot: "aurae"}}
	f.Fuzz(func(t *testing.T, data []byte, id, cgroupParent, hostname string) {
		p := &podsv0.Pod{}
		_ = proto.Unmarshal(data, p)
		if id != "" {
			p.Id = id
		}
		if cgroupParent != "" {
			p.CgroupParent = cgroupParent
		}
		if hostname != "" {
			p.Hostname = hostname
		}
		if err := validPod(p); err != nil {
			requireInvalid(t, err)
			return
		}

		id = p.GetId()
		if id == "" || len(id) > maxIDLen || strings.ContainsAny(id, "/\x00") || id[0] == '.' {
			t.Fatalf("pod id %q accepted", id)
		}
		cg := s.podCgroup(p)
		// Below auraed's root, or, for an absolute parent (the kubelet's),
		// right below that parent.
		below := "aurae/"
		if absoluteParent(p) {
			below = strings.Trim(p.GetCgroupParent(), "/") + "/"
		}
		if "/"+cg != path.Clean("/"+cg) || !strings.HasPrefix(cg, below) || path.Base(cg) != id || path.Dir(cg) == "." {
			t.Fatalf("pod cgroup %q (parent %q) is not a clean path below %s ending in the pod's id", cg, p.GetCgroupParent(), below)
		}
		if dir := s.podDir(id); path.Dir(dir) != fuzzStateDir+"/pods" {
			t.Fatalf("pod directory %q is not right below %s/pods", dir, fuzzStateDir)
		}
		if h := p.GetHostname(); len(h) > 64 || strings.ContainsAny(h, "/ \t\n\x00") {
			t.Fatalf("hostname %q accepted", h)
		}
		ns := p.GetNamespaces()
		for _, m := range []podsv0.NamespaceMode{ns.GetNetwork(), ns.GetIpc(), ns.GetPid()} {
			if m != podsv0.NamespaceMode_NAMESPACE_MODE_POD && m != podsv0.NamespaceMode_NAMESPACE_MODE_NODE && m != podsv0.NamespaceMode_NAMESPACE_MODE_CONTAINER {
				t.Fatalf("namespace mode %s accepted", m)
			}
		}
		for k, v := range p.GetSysctls() {
			if strings.Contains(k, "..") || strings.ContainsAny(k, "/\x00") || strings.ContainsAny(v, "\n\x00") {
				t.Fatalf("sysctl %q=%q accepted", k, v)
			}
		}
		if u := p.GetUserNamespace(); u != nil {
			for _, m := range append(append([]*podsv0.IDMapping{}, u.GetUidMappings()...), u.GetGidMappings()...) {
				if m.GetContainerId() != 0 || m.GetHostId() == 0 || m.GetSize() == 0 || uint64(m.GetHostId())+uint64(m.GetSize()) > 1<<32-1 {
					t.Fatalf("user namespace mapping %v accepted", m)
				}
			}
			if ns.GetNetwork() == podsv0.NamespaceMode_NAMESPACE_MODE_NODE {
				t.Fatal("a user namespace accepted in a pod on the node's network")
			}
		}
	})
}

// Running containers of the fixture: one in the pod, one in another pod;
// an exited one of the pod.
const (
	fuzzPodID   = "pod1"
	fuzzRunning = 4242
	// fuzzRunningPIDNS is its pid namespace, which a TARGET container joins.
	fuzzRunningPIDNS = "/proc/4242/ns/pid"
	fuzzOtherPod     = 4343
	fuzzExited       = 4444
	fuzzOOMFloor     = -998
	fuzzPodCgroup    = "aurae/kubepods/burstable/podabc/pod1"
)

// fuzzPod is an allocated pod as Allocate records it, its kind chosen by
// the bits of sel: the node's network, the node's IPC, the pid namespace
// (shared, the node's, each container's own), a user namespace.
func fuzzPod(sel uint8) *pod {
	podNS, node, ctr := podsv0.NamespaceMode_NAMESPACE_MODE_POD, podsv0.NamespaceMode_NAMESPACE_MODE_NODE, podsv0.NamespaceMode_NAMESPACE_MODE_CONTAINER
	spec := &podsv0.Pod{Id: fuzzPodID, CgroupParent: "kubepods/burstable/podabc", Namespaces: &podsv0.NamespaceOptions{Network: podNS, Ipc: podNS, Pid: podNS}}
	if sel&1 != 0 {
		spec.Namespaces.Network = node
	}
	if sel&2 != 0 {
		spec.Namespaces.Ipc = node
	}
	switch sel >> 2 & 3 {
	case 1:
		spec.Namespaces.Pid = node
	case 2, 3:
		spec.Namespaces.Pid = ctr
	}
	if sel&16 != 0 && sel&3 == 0 && spec.Namespaces.Pid != node {
		m := []*podsv0.IDMapping{{ContainerId: 0, HostId: 100000, Size: 65536}}
		spec.UserNamespace = &podsv0.UserNamespace{UidMappings: m, GidMappings: m}
	}
	p := &pod{spec: spec}
	nsDir := fuzzStateDir + "/pods/" + fuzzPodID + "/ns/"
	p.paths = &podsv0.AllocateResponse{PodId: fuzzPodID, CgroupPath: fuzzPodCgroup, OomScoreAdjMin: fuzzOOMFloor}
	for _, n := range p.ownedNamespaces() {
		if n.on {
			*n.dst = nsDir + n.kind
		}
	}
	return p
}

func fuzzService(p *pod) *Service {
	ctr := func(id, podID string, state int32, pid int) *container {
		return &container{id: id, podID: podID, rec: ctrRecord{ID: id, PodID: podID, State: state, Pid: pid}}
	}
	return &Service{
		cfg:      Config{StateDir: fuzzStateDir, CgroupRoot: "aurae"},
		oomFloor: fuzzOOMFloor,
		pods:     map[string]*pod{fuzzPodID: p},
		ctrs: map[string]*container{
			"running": ctr("running", fuzzPodID, stateRunning, fuzzRunning),
			"other":   ctr("other", "pod2", stateRunning, fuzzOtherPod),
			"exited":  ctr("exited", fuzzPodID, int32(podsv0.ContainerState_CONTAINER_STATE_EXITED), fuzzExited),
		},
	}
}

// FuzzCheckSpec checks Start's container, its OCI spec the fuzzer's JSON,
// against an allocated pod of the kind sel chooses: what is accepted keeps
// the container inside its pod (its cgroup right below the pod's; only the
// pod's namespaces, new ones, the pid namespace of a running container of
// the same pod, or the node's where the pod uses the node's), with clean
// mounts and no oomScoreAdj below auraed's.
func FuzzCheckSpec(f *testing.F) {
	f.Fuzz(func(t *testing.T, ociSpec []byte, id, rootfsPath, logPath string, tty bool, sel uint8) {
		p := fuzzPod(sel)
		s := fuzzService(p)
		req := &podsv0.Container{Id: id, OciSpec: ociSpec, RootfsPath: rootfsPath, LogPath: logPath, Tty: tty}
		if err := validContainer(fuzzPodID, req); err != nil {
			requireInvalid(t, err)
			return
		}
		sp, err := s.checkSpec(p, req)
		if err != nil {
			requireInvalid(t, err)
			return
		}

		if want := "/" + fuzzPodCgroup + "/" + id; sp.Linux.CgroupsPath != want || path.Dir(path.Clean(want)) != "/"+fuzzPodCgroup {
			t.Fatalf("cgroupsPath %q of container %q is not right below its pod's /%s", sp.Linux.CgroupsPath, id, fuzzPodCgroup)
		}
		if sp.Process.Terminal != tty || len(sp.Process.Args) == 0 {
			t.Fatalf("process %+v for tty %t", sp.Process, tty)
		}
		if adj := sp.Process.OOMScoreAdj; adj != nil && *adj < fuzzOOMFloor {
			t.Fatalf("oomScoreAdj %d below auraed's %d", *adj, fuzzOOMFloor)
		}
		if sp.Root == nil || !path.IsAbs(sp.Root.Path) || hasDotDot(sp.Root.Path) || rootfsPath != "" && rootfsPath != sp.Root.Path {
			t.Fatalf("root %+v (rootfs_path %q)", sp.Root, rootfsPath)
		}
		for _, m := range sp.Mounts {
			if !path.IsAbs(m.Destination) || hasDotDot(m.Destination) {
				t.Fatalf("mount destination %q", m.Destination)
			}
			if m.Type == "bind" && (!path.IsAbs(m.Source) || hasDotDot(m.Source) || strings.ContainsRune(m.Source, 0)) {
				t.Fatalf("bind mount source %q", m.Source)
			}
			if len(m.UIDMappings)+len(m.GIDMappings) > 0 && !p.ownsUser() {
				t.Fatalf("mount %s id-mapped in a pod without a user namespace", m.Destination)
			}
		}
		checkSpecNamespaces(t, p, sp.Linux.Namespaces)
	})
}

func checkSpecNamespaces(t *testing.T, p *pod, nss []specs.LinuxNamespace) {
	t.Helper()
	got := map[specs.LinuxNamespaceType]string{}
	for _, ns := range nss {
		if _, dup := got[ns.Type]; dup {
			t.Fatalf("two %s namespaces", ns.Type)
		}
		got[ns.Type] = ns.Path
	}
	for _, n := range []struct {
		typ    specs.LinuxNamespaceType
		owns   bool
		pinned string
		mayNew bool
	}{
		{specs.NetworkNamespace, p.ownsNet(), p.paths.GetNetworkNamespacePath(), true},
		{specs.IPCNamespace, p.ownsIPC(), p.paths.GetIpcNamespacePath(), true},
		{specs.UTSNamespace, p.ownsUTS(), p.paths.GetUtsNamespacePath(), true},
		{specs.UserNamespace, p.ownsUser(), p.paths.GetUserNamespacePath(), !p.ownsUser()},
		{specs.PIDNamespace, p.spec.GetNamespaces().GetPid() != podsv0.NamespaceMode_NAMESPACE_MODE_NODE, p.paths.GetPidNamespacePath(), !p.ownsPID()},
	} {
		path, ok := got[n.typ]
		switch {
		case !ok && n.owns:
			t.Fatalf("the node's %s namespace in a pod that does not use it", n.typ)
		case ok && path == "" && !n.mayNew:
			t.Fatalf("a new %s namespace in a pod that shares its own", n.typ)
		case ok && path != "" && path != n.pinned && (n.typ != specs.PIDNamespace || path != fuzzRunningPIDNS):
			t.Fatalf("%s namespace %q is not one of its pod's (%q)", n.typ, path, n.pinned)
		}
	}
	if path, ok := got[specs.MountNamespace]; !ok || path != "" {
		t.Fatalf("mount namespace %q (present %t), want a new one", path, ok)
	}
	for _, typ := range []specs.LinuxNamespaceType{specs.CgroupNamespace, specs.TimeNamespace} {
		if got[typ] != "" {
			t.Fatalf("%s namespace %q joined", typ, got[typ])
		}
	}
}

func hasDotDot(p string) bool {
	for _, seg := range strings.Split(p, "/") {
		if seg == ".." {
			return true
		}
	}
	return false
}
