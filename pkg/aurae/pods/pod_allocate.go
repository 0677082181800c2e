package pods

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	podsv0 "github.com/aurae-runtime/aurae-cri/api/pods/v0"
	"github.com/aurae-runtime/aurae-cri/internal/linux"
	"github.com/aurae-runtime/aurae-cri/internal/timing"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/cgroup"
)

func (s *Service) allocate(ctx context.Context, spec *podsv0.Pod) (_ *podsv0.AllocateResponse, retErr error) {
	if err := validPod(spec); err != nil {
		return nil, err
	}
	spec = proto.Clone(spec).(*podsv0.Pod)
	id := spec.GetId()
	log := s.log.With("pod", id)
	steps := timing.Start()
	defer func() { steps.Log(ctx, log, "pod allocate steps", "ok", retErr == nil) }()

	// Reserve the id before any side effect; a failure releases it.
	p := &pod{spec: spec, reserved: true, createdAt: time.Now()}
	s.mu.Lock()
	if _, ok := s.pods[id]; ok {
		s.mu.Unlock()
		return nil, fmt.Errorf("pod %q: %w", id, errdefs.ErrAlreadyExists)
	}
	s.pods[id] = p
	s.mu.Unlock()
	p.mu.Lock()
	defer p.mu.Unlock()
	defer func() {
		if retErr != nil {
			s.mu.Lock()
			delete(s.pods, id)
			s.mu.Unlock()
		}
	}()

	cgPath, slice, err := s.placePod(spec)
	if err != nil {
		return nil, err
	}
	dir := s.podDir(id)
	paths := &podsv0.AllocateResponse{
		PodId:          id,
		CgroupPath:     cgPath,
		ResolvConfPath: filepath.Join(dir, "resolv.conf"),
		HostnamePath:   filepath.Join(dir, "hostname"),
		HostsPath:      filepath.Join(dir, "hosts"),
		CgroupV2:       cgroup.Unified(),
		OomScoreAdjMin: s.oomFloor,
		OciVersion:     s.specVersion,
		CgroupDriver:   string(s.cfg.CgroupDriver),
		CgroupSlice:    slice,
	}
	p.paths = paths
	if _, err := os.Stat(dir); err == nil {
		return nil, fmt.Errorf("pod %q: directory %s that auraed does not know exists: %w", id, dir, errdefs.ErrAlreadyExists)
	}
	if slice == "" && absoluteParent(spec) && !cgroup.Exists(strings.Trim(spec.GetCgroupParent(), "/")) {
		// The kubelet makes its pod cgroup before the pod; auraed would
		// leave one it made behind.
		return nil, fmt.Errorf("pod %q: cgroup parent %s does not exist: %w", id, spec.GetCgroupParent(), errdefs.ErrFailedPrecondition)
	}
	if cgroup.Exists(cgPath) {
		return nil, fmt.Errorf("pod %q: a cgroup %s that auraed does not know exists: %w", id, cgPath, errdefs.ErrAlreadyExists)
	}
	steps.Done("checks")
	// Recorded first: if auraed dies half-way, recovery undoes the rest.
	if err := s.persistPod(p, true); err != nil {
		return nil, err
	}
	steps.Done("persist_allocating")
	defer func() {
		if retErr != nil {
			ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
			defer cancel()
			if err := s.teardownPod(ctx, p); err != nil {
				log.Warn("undo pod allocation", "error", err)
				return // the record stays: recovery at the next start retries
			}
			if err := s.store.delete(bucketPods, id); err != nil {
				log.Warn("undo pod allocation", "error", err)
			}
		}
	}()
	if err := os.MkdirAll(filepath.Join(dir, "ns"), 0o755); err != nil {
		return nil, fmt.Errorf("pod %q: %w", id, err)
	}
	if err := writePodFiles(spec, paths); err != nil {
		return nil, fmt.Errorf("pod %q: %w", id, err)
	}
	steps.Done("pod_files")
	if err := s.makePodCgroup(ctx, p); err != nil {
		return nil, existsErr(id, err)
	}
	steps.Done("cgroup")
	if p.ownsNet() || p.ownsIPC() || p.ownsUTS() || p.ownsPID() || p.ownsUser() {
		if err := s.makeNamespaces(p); err != nil {
			return nil, fmt.Errorf("pod %q: %w", id, err)
		}
	}
	steps.Done("namespaces")
	if err := s.persistPod(p, false); err != nil {
		return nil, err
	}
	steps.Done("persist_allocated")
	s.mu.Lock()
	p.reserved = false
	s.mu.Unlock()
	holderBin := "" // none: namespaces made from a thread
	if !p.threadNamespaces() {
		holderBin = holderPath(p.ownsUser())
	}
	log.Info("pod allocated", "cgroup", cgPath, "netns", paths.NetworkNamespacePath, "pid_shared", p.ownsPID(), "userns", paths.UserNamespacePath, "holder", holderBin)
	return proto.Clone(paths).(*podsv0.AllocateResponse), nil
}

// makeNamespaces makes the pod's own namespaces and pins them: from a
// thread of auraed's (namespaces_thread.go), or else from a holder, which
// it lets go unless it holds the pod's pid namespace.
func (s *Service) makeNamespaces(p *pod) error {
	h := holderSpec{
		net: p.ownsNet(), ipc: p.ownsIPC(), uts: p.ownsUTS(), pid: p.ownsPID(),
		hostname: p.spec.GetHostname(), sysctls: p.spec.GetSysctls(),
		user: p.spec.GetUserNamespace(),
	}
	nsDir := filepath.Join(s.podDir(p.spec.GetId()), "ns")
	if p.threadNamespaces() {
		pins := map[string]string{}
		for _, ns := range p.ownedNamespaces() {
			if ns.on {
				pins[ns.kind] = filepath.Join(nsDir, ns.kind)
			}
		}
		if err := makeNamespacesInThread(h, pins); err != nil {
			return err
		}
		for _, ns := range p.ownedNamespaces() {
			if ns.on {
				*ns.dst = pins[ns.kind]
			}
		}
		return nil
	}
	// The holder lives in the pod's infra cgroup.
	place, err := s.infraPlacer(p)
	if err != nil {
		return err
	}
	h.place = place
	cmd, err := startHolder(h)
	if err != nil {
		return err
	}
	pid := cmd.Process.Pid
	kill := func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}
	for _, ns := range p.ownedNamespaces() {
		if !ns.on {
			continue
		}
		target := filepath.Join(nsDir, ns.kind)
		if err := pin(pid, ns.kind, target); err != nil {
			kill()
			return err
		}
		*ns.dst = target
	}
	if !p.ownsPID() {
		kill()
		return nil
	}
	st, err := linux.StartTime(pid)
	if err != nil {
		kill()
		return err
	}
	p.holder = holderRef{Pid: pid, Start: st}
	p.holderW = make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(p.holderW)
	}()
	return nil
}

func (s *Service) persistPod(p *pod, allocating bool) error {
	spec, err := protojson.Marshal(p.spec)
	if err != nil {
		return err
	}
	paths, err := protojson.Marshal(p.paths)
	if err != nil {
		return err
	}
	r := podRecord{Spec: spec, Paths: paths, Holder: p.holder, CreatedAt: p.createdAt, Allocating: allocating}
	if err := s.store.put(bucketPods, p.spec.GetId(), r); err != nil {
		return fmt.Errorf("persist pod %q: %w", p.spec.GetId(), err)
	}
	return nil
}

// writePodFiles writes the hostname, resolv.conf and hosts files containers
// bind-mount.
func writePodFiles(spec *podsv0.Pod, paths *podsv0.AllocateResponse) error {
	hostname := spec.GetHostname()
	if hostname == "" || spec.GetNamespaces().GetNetwork() == podsv0.NamespaceMode_NAMESPACE_MODE_NODE {
		h, err := os.Hostname()
		if err != nil {
			return err
		}
		hostname = h
	}
	hosts := "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n"
	files := map[string]string{
		paths.HostnamePath: hostname + "\n",
		paths.HostsPath:    hosts,
	}
	dns := spec.GetDns()
	switch {
	case dns.GetResolvConf() != "":
		files[paths.ResolvConfPath] = dns.GetResolvConf()
	case len(dns.GetServers())+len(dns.GetSearches())+len(dns.GetOptions()) > 0:
		var b strings.Builder
		for _, sv := range dns.GetServers() {
			fmt.Fprintf(&b, "nameserver %s\n", sv)
		}
		if len(dns.GetSearches()) > 0 {
			fmt.Fprintf(&b, "search %s\n", strings.Join(dns.GetSearches(), " "))
		}
		if len(dns.GetOptions()) > 0 {
			fmt.Fprintf(&b, "options %s\n", strings.Join(dns.GetOptions(), " "))
		}
		files[paths.ResolvConfPath] = b.String()
	default:
		// As containerd does: the host's.
		b, err := os.ReadFile("/etc/resolv.conf")
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		files[paths.ResolvConfPath] = string(b)
	}
	for p, content := range files {
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			return err
		}
	}
	return nil
}
