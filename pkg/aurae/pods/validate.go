package pods

import (
	"fmt"
	"path/filepath"
	"strings"

	"github.com/containerd/errdefs"

	podsv0 "github.com/aurae-runtime/aurae-cri/api/pods/v0"
)

const (
	maxIDLen = 64
	// Depth of a cgroup parent ("kubepods/burstable/pod<uid>").
	maxParentDepth = 8
)

// validID checks a pod or container id: a portable file name that is safe
// as a cgroup directory and a runc container id. A leading '.' is refused so
// that ids never collide with auraed's own entries (".conmon").
func validID(what, s string) error {
	if s == "" {
		return fmt.Errorf("%s id is empty: %w", what, errdefs.ErrInvalidArgument)
	}
	if len(s) > maxIDLen {
		return fmt.Errorf("%s id %q is longer than %d characters: %w", what, s, maxIDLen, errdefs.ErrInvalidArgument)
	}
	if s[0] == '.' {
		return fmt.Errorf("%s id %q starts with '.': %w", what, s, errdefs.ErrInvalidArgument)
	}
	for _, r := range s {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.'
		if !ok {
			return fmt.Errorf("%s id %q: character %q is not allowed (letters, digits, '-', '_', '.'): %w", what, s, r, errdefs.ErrInvalidArgument)
		}
	}
	return nil
}

// validCgroupParent checks a cgroup parent: '/'-separated names, no "..".
func validCgroupParent(p string) error {
	p = strings.Trim(p, "/")
	if p == "" {
		return nil
	}
	segs := strings.Split(p, "/")
	if len(segs) > maxParentDepth {
		return fmt.Errorf("cgroup parent %q nests deeper than %d: %w", p, maxParentDepth, errdefs.ErrInvalidArgument)
	}
	for _, s := range segs {
		if s == "" || s == "." || s == ".." {
			return fmt.Errorf("cgroup parent %q: segment %q is not allowed: %w", p, s, errdefs.ErrInvalidArgument)
		}
		if err := validID("cgroup parent", strings.TrimPrefix(s, ".")); err != nil {
			return fmt.Errorf("cgroup parent %q: %w", p, err)
		}
	}
	return nil
}

// validPath checks a host path from a request: absolute, without "..".
func validPath(what, p string) error {
	if p == "" {
		return fmt.Errorf("%s is empty: %w", what, errdefs.ErrInvalidArgument)
	}
	if !filepath.IsAbs(p) {
		return fmt.Errorf("%s %q is not absolute: %w", what, p, errdefs.ErrInvalidArgument)
	}
	for _, s := range strings.Split(p, "/") {
		if s == ".." {
			return fmt.Errorf("%s %q contains \"..\": %w", what, p, errdefs.ErrInvalidArgument)
		}
	}
	if strings.ContainsRune(p, 0) {
		return fmt.Errorf("%s %q contains NUL: %w", what, p, errdefs.ErrInvalidArgument)
	}
	return nil
}

// validHostname checks an RFC 1123 label sequence of at most 64 characters.
func validHostname(h string) error {
	if len(h) > 64 {
		return fmt.Errorf("hostname %q is longer than 64 characters: %w", h, errdefs.ErrInvalidArgument)
	}
	for _, r := range h {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '.'
		if !ok {
			return fmt.Errorf("hostname %q: character %q is not allowed: %w", h, r, errdefs.ErrInvalidArgument)
		}
	}
	return nil
}

// validPod checks an Allocate request's pod.
func validPod(p *podsv0.Pod) error {
	if p == nil {
		return fmt.Errorf("pod is missing: %w", errdefs.ErrInvalidArgument)
	}
	if err := validID("pod", p.GetId()); err != nil {
		return err
	}
	if err := validCgroupParent(p.GetCgroupParent()); err != nil {
		return err
	}
	if err := validHostname(p.GetHostname()); err != nil {
		return err
	}
	ns := p.GetNamespaces()
	pod, node := podsv0.NamespaceMode_NAMESPACE_MODE_POD, podsv0.NamespaceMode_NAMESPACE_MODE_NODE
	if m := ns.GetNetwork(); m != pod && m != node {
		return fmt.Errorf("network namespace mode %s is not supported (POD or NODE): %w", m, errdefs.ErrInvalidArgument)
	}
	if m := ns.GetIpc(); m != pod && m != node {
		return fmt.Errorf("ipc namespace mode %s is not supported (POD or NODE): %w", m, errdefs.ErrInvalidArgument)
	}
	if m := ns.GetPid(); m != pod && m != node && m != podsv0.NamespaceMode_NAMESPACE_MODE_CONTAINER {
		return fmt.Errorf("pid namespace mode %s is not supported: %w", m, errdefs.ErrInvalidArgument)
	}
	if err := validUserNamespace(p); err != nil {
		return err
	}
	for k, v := range p.GetSysctls() {
		if err := validSysctl(k, v, ns.GetNetwork() == pod, ns.GetIpc() == pod); err != nil {
			return err
		}
	}
	for _, s := range append(append(append([]string{}, p.GetDns().GetServers()...), p.GetDns().GetSearches()...), p.GetDns().GetOptions()...) {
		if strings.ContainsAny(s, " \t\n\x00") {
			return fmt.Errorf("dns entry %q contains white space: %w", s, errdefs.ErrInvalidArgument)
		}
	}
	return nil
}

// validSysctl accepts the namespaced sysctls of the namespaces the pod owns,
// as runc and the kubelet do.
func validSysctl(k, v string, ownNet, ownIPC bool) error {
	bad := k == "" || strings.Contains(k, "..") || strings.ContainsAny(v, "\n\x00")
	for _, r := range k {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-'
		if !ok {
			bad = true
		}
	}
	if bad {
		return fmt.Errorf("sysctl %q=%q is malformed: %w", k, v, errdefs.ErrInvalidArgument)
	}
	switch {
	case strings.HasPrefix(k, "net."):
		if !ownNet {
			return fmt.Errorf("sysctl %q needs the pod's own network namespace: %w", k, errdefs.ErrInvalidArgument)
		}
	case strings.HasPrefix(k, "kernel.shm"), strings.HasPrefix(k, "kernel.msg"), k == "kernel.sem", strings.HasPrefix(k, "fs.mqueue."):
		if !ownIPC {
			return fmt.Errorf("sysctl %q needs the pod's own ipc namespace: %w", k, errdefs.ErrInvalidArgument)
		}
	default:
		return fmt.Errorf("sysctl %q is not namespaced: %w", k, errdefs.ErrInvalidArgument)
	}
	return nil
}

// validUserNamespace checks a pod's user namespace: one uid and one gid
// mapping (as the kubelet gives), each mapping container id 0 to a host
// range that does not hold host id 0 and does not wrap; the namespaces it
// owns must be the pod's (a user namespace cannot own the node's).
func validUserNamespace(p *podsv0.Pod) error {
	u := p.GetUserNamespace()
	if u == nil {
		return nil
	}
	for _, m := range []struct {
		what string
		maps []*podsv0.IDMapping
	}{{"uid", u.GetUidMappings()}, {"gid", u.GetGidMappings()}} {
		if len(m.maps) != 1 {
			return fmt.Errorf("user namespace: %d %s mappings, want exactly one: %w", len(m.maps), m.what, errdefs.ErrInvalidArgument)
		}
		if err := validIDMapping(m.what, m.maps[0]); err != nil {
			return err
		}
	}
	ns := p.GetNamespaces()
	node := podsv0.NamespaceMode_NAMESPACE_MODE_NODE
	for _, n := range []struct {
		what string
		mode podsv0.NamespaceMode
	}{{"network", ns.GetNetwork()}, {"ipc", ns.GetIpc()}, {"pid", ns.GetPid()}} {
		if n.mode == node {
			return fmt.Errorf("user namespace: the pod uses the node's %s namespace, which its user namespace cannot own: %w", n.what, errdefs.ErrInvalidArgument)
		}
	}
	return nil
}

func validIDMapping(what string, m *podsv0.IDMapping) error {
	switch {
	case m.GetContainerId() != 0:
		return fmt.Errorf("user namespace: the %s mapping starts at container id %d: container id 0 must be mapped: %w", what, m.GetContainerId(), errdefs.ErrInvalidArgument)
	case m.GetSize() == 0:
		return fmt.Errorf("user namespace: the %s mapping is empty: %w", what, errdefs.ErrInvalidArgument)
	case m.GetHostId() == 0:
		return fmt.Errorf("user namespace: the %s mapping maps to host id 0: %w", what, errdefs.ErrInvalidArgument)
	case uint64(m.GetHostId())+uint64(m.GetSize()) > 1<<32-1:
		return fmt.Errorf("user namespace: the %s mapping %d+%d passes the largest id: %w", what, m.GetHostId(), m.GetSize(), errdefs.ErrInvalidArgument)
	}
	return nil
}
