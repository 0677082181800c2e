package cri

import (
	"fmt"
	"slices"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/pkg/controller"
	"github.com/aurae-runtime/aurae-cri/pkg/controller/vm"
	"github.com/aurae-runtime/aurae-cri/pkg/sandbox"
)

// checkUserNamespace checks a pod's user namespace options as containerd
// does: NODE (or none) with no mappings; POD with exactly one uid and one
// gid mapping, each mapping container id 0 to host ids that do not hold
// host id 0 (the pod's root would be the node's), on the pod's own
// network; CONTAINER and TARGET are not supported.
func checkUserNamespace(cfg *runtimeapi.PodSandboxConfig) error {
	nso := cfg.GetLinux().GetSecurityContext().GetNamespaceOptions()
	u := nso.GetUsernsOptions()
	if u == nil {
		return nil
	}
	switch u.GetMode() {
	case runtimeapi.NamespaceMode_NODE:
		if len(u.GetUids())+len(u.GetGids()) > 0 {
			return fmt.Errorf("user namespace mode NODE with id mappings: %w", errInvalid)
		}
		return nil
	case runtimeapi.NamespaceMode_POD:
	default:
		return fmt.Errorf("user namespace mode %s is not supported (POD or NODE): %w", u.GetMode(), errInvalid)
	}
	for _, m := range []struct {
		what string
		maps []*runtimeapi.IDMapping
	}{{"uid", u.GetUids()}, {"gid", u.GetGids()}} {
		if len(m.maps) != 1 {
			return fmt.Errorf("user namespace: %d %s mappings, want exactly one: %w", len(m.maps), m.what, errInvalid)
		}
		id := m.maps[0]
		switch {
		case id.GetContainerId() != 0:
			return fmt.Errorf("user namespace: the %s mapping starts at container id %d: container id 0 must be mapped: %w", m.what, id.GetContainerId(), errInvalid)
		case id.GetLength() == 0:
			return fmt.Errorf("user namespace: the %s mapping is empty: %w", m.what, errInvalid)
		case id.GetHostId() == 0:
			return fmt.Errorf("user namespace: the %s mapping maps to host id 0: %w", m.what, errInvalid)
		case uint64(id.GetHostId())+uint64(id.GetLength()) > 1<<32-1:
			return fmt.Errorf("user namespace: the %s mapping %d+%d passes the largest id: %w", m.what, id.GetHostId(), id.GetLength(), errInvalid)
		}
	}
	for _, n := range []struct {
		what string
		mode runtimeapi.NamespaceMode
	}{{"network", nso.GetNetwork()}, {"ipc", nso.GetIpc()}, {"pid", nso.GetPid()}} {
		if n.mode == runtimeapi.NamespaceMode_NODE {
			return fmt.Errorf("user namespace mode POD with the node's %s namespace is not supported: %w", n.what, errInvalid)
		}
	}
	return nil
}

// userNamespace is the pod's user namespace as the controller takes it; nil
// for the node's. The options are checked (checkUserNamespace).
func userNamespace(cfg *runtimeapi.PodSandboxConfig) *controller.UserNamespace {
	u := cfg.GetLinux().GetSecurityContext().GetNamespaceOptions().GetUsernsOptions()
	if u == nil || u.GetMode() != runtimeapi.NamespaceMode_POD {
		return nil
	}
	conv := func(ms []*runtimeapi.IDMapping) []specs.LinuxIDMapping {
		out := make([]specs.LinuxIDMapping, 0, len(ms))
		for _, m := range ms {
			out = append(out, specs.LinuxIDMapping{ContainerID: m.GetContainerId(), HostID: m.GetHostId(), Size: m.GetLength()})
		}
		return out
	}
	return &controller.UserNamespace{UIDs: conv(u.GetUids()), GIDs: conv(u.GetGids())}
}

// rootfsIDMapOf is how the rootfs of a container of sb is id-mapped: with
// its pod's user namespace; nil for a pod in the node's.
func rootfsIDMapOf(sb sandbox.Sandbox) *rootfsIDMap {
	u := userNamespace(sb.Config)
	if u == nil || sb.Status.UserNSPath == "" {
		return nil
	}
	return &rootfsIDMap{UserNS: sb.Status.UserNSPath, UID: u.UIDs[0].HostID, GID: u.GIDs[0].HostID}
}

// userNamespaces tells whether pods of handler may have a user namespace:
// where id-mapped rootfs work (probed), not in VM pods (the VM is their
// boundary).
func (r *Runtime) userNamespaces(handler string) bool {
	return r.host.UserNamespaces && !slices.Contains(vm.Handlers, handler)
}
