package cri

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/pkg/controller"
	"github.com/aurae-runtime/aurae-cri/pkg/ocispec"
)

// The fuzz targets of the CRI's request checks: what RunPodSandbox and
// CreateContainer check before any side effect, in their order, on
// configs decoded from the fuzzer's bytes (proto.Unmarshal; what does not
// decode is a config with whatever decoded before) and string fields set
// from its strings. A refusal must carry a kind (it becomes the gRPC code
// the kubelet sees); what is accepted must be safe to use as names, CNI
// args and paths. Seeds: testdata/fuzz/<target>/ (what the kubelet and
// critest send); `make fuzz` runs them.

// checkRunPodSandbox is what RunPodSandbox checks of cfg before it
// reserves the pod's name.
func checkRunPodSandbox(cfg *runtimeapi.PodSandboxConfig) error {
	if err := checkSandboxMetadata(cfg.GetMetadata()); err != nil {
		return err
	}
	if d := cfg.GetLogDirectory(); d != "" {
		if err := checkAbsolute("log directory", d); err != nil {
			return err
		}
	}
	for _, pm := range cfg.GetPortMappings() {
		if pm.GetContainerPort() <= 0 || pm.GetContainerPort() > 65535 || pm.GetHostPort() < 0 || pm.GetHostPort() > 65535 {
			return fmt.Errorf("port mapping %v is out of range: %w", pm, errInvalid)
		}
	}
	return checkUserNamespace(cfg)
}

// requireKind fails t unless err wraps one of the kinds a request check
// may answer with.
func requireKind(t *testing.T, err error) {
	t.Helper()
	if !errdefs.IsInvalidArgument(err) && !errdefs.IsNotImplemented(err) && !errdefs.IsFailedPrecondition(err) {
		t.Fatalf("refusal of no clear kind (it would reach the kubelet as Unknown): %v", err)
	}
}

// safeName: what may become part of a store name ('_'-joined), CNI_ARGS
// ("K=V;K=V") and log lines.
func safeName(t *testing.T, what, s string) {
	t.Helper()
	if s == "" {
		t.Fatalf("%s is empty", what)
	}
	allowed := func(r rune) bool {
		return r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '.'
	}
	for _, r := range s {
		if !allowed(r) {
			t.Fatalf("%s %q accepted with %q", what, s, r)
		}
	}
}

func FuzzRunPodSandbox(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte, name, namespace, uid, logDir string) {
		cfg := &runtimeapi.PodSandboxConfig{}
		_ = proto.Unmarshal(data, cfg)
		if cfg.Metadata == nil {
			cfg.Metadata = &runtimeapi.PodSandboxMetadata{}
		}
		// The strings override what the bytes say, when given.
		for _, o := range []struct {
			dst *string
			v   string
		}{{&cfg.Metadata.Name, name}, {&cfg.Metadata.Namespace, namespace}, {&cfg.Metadata.Uid, uid}, {&cfg.LogDirectory, logDir}} {
			if o.v != "" {
				*o.dst = o.v
			}
		}
		if err := checkRunPodSandbox(cfg); err != nil {
			requireKind(t, err)
			return
		}

		md := cfg.GetMetadata()
		safeName(t, "pod name", md.GetName())
		safeName(t, "pod namespace", md.GetNamespace())
		safeName(t, "pod uid", md.GetUid())
		if len(md.GetName()) > 253 || len(md.GetNamespace()) > 63 || len(md.GetUid()) > maxUIDLength {
			t.Fatalf("metadata %v accepted beyond its length bounds", md)
		}
		// The reserved name gives the identity back, field by field.
		if parts := strings.Split(sandboxName(md), "_"); len(parts) != 4 || parts[0] != md.GetName() || parts[1] != md.GetNamespace() || parts[2] != md.GetUid() {
			t.Fatalf("sandbox name %q does not split into the pod's name, namespace, uid and attempt", sandboxName(md))
		}
		if d := cfg.GetLogDirectory(); d != "" && (!filepath.IsAbs(d) || hasDotDot(d) || strings.ContainsRune(d, 0)) {
			t.Fatalf("log directory %q accepted", d)
		}
		for _, pm := range cfg.GetPortMappings() {
			if pm.GetContainerPort() < 1 || pm.GetContainerPort() > 65535 || pm.GetHostPort() < 0 || pm.GetHostPort() > 65535 {
				t.Fatalf("port mapping %v accepted", pm)
			}
		}

		spec := podSpec("0123456789abcdef", cfg, "", "/kubepods")
		if u := spec.UserNamespace; u != nil {
			if len(u.UIDs) != 1 || len(u.GIDs) != 1 {
				t.Fatalf("user namespace %v accepted with other than one uid and one gid mapping", u)
			}
			for _, m := range append(u.UIDs, u.GIDs...) {
				if m.ContainerID != 0 || m.HostID == 0 || m.Size == 0 || uint64(m.HostID)+uint64(m.Size) > 1<<32-1 {
					t.Fatalf("user namespace mapping %+v accepted", m)
				}
			}
			for _, mode := range []controller.NamespaceMode{spec.Network, spec.IPC, spec.PID} {
				if mode == controller.NamespaceNode {
					t.Fatalf("user namespace accepted in a pod on one of the node's namespaces: %+v", spec)
				}
			}
		}
		if spec.CgroupParent == "" {
			t.Fatalf("no cgroup parent in %+v", spec)
		}
	})
}

// The pod a fuzzed container is created in: critest's, with a log
// directory of its own.
func fuzzSandbox(logDir string) *runtimeapi.PodSandboxConfig {
	return &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: "create-PodSandbox-for-container", Namespace: "cri-test", Uid: "6d8a3b2e-4c9f-4e8a-9d57-1f2b3c4d5e6f"},
		LogDirectory: logDir,
	}
}

// checkCreateContainer is what CreateContainer checks of cfg before it
// reserves the container's name; it returns the log path it resolved.
func checkCreateContainer(cfg *runtimeapi.ContainerConfig, sb *runtimeapi.PodSandboxConfig) (string, error) {
	if err := checkContainerMetadata(cfg.GetMetadata()); err != nil {
		return "", err
	}
	if cfg.GetImage().GetImage() == "" {
		return "", fmt.Errorf("container image is missing: %w", errInvalid)
	}
	logRel, err := cleanRelative("log path", cfg.GetLogPath())
	if err != nil {
		return "", err
	}
	logPath, err := containerLogPath(sb.GetLogDirectory(), logRel, false)
	if err != nil {
		return "", err
	}
	for _, m := range cfg.GetMounts() {
		if err := checkAbsolute("mount host path", m.GetHostPath()); err != nil {
			return "", err
		}
		if err := checkAbsolute("mount container path", m.GetContainerPath()); err != nil {
			return "", err
		}
	}
	if _, err := ocispec.CDIDevices(cfg); err != nil {
		return "", err
	}
	return logPath, nil
}

func FuzzCreateContainer(f *testing.F) {
	// A log directory as the kubelet leaves it after a restart, with what
	// a workload that can write there could plant.
	logDir := f.TempDir()
	for _, d := range []string{"nginx", "dir/sub"} {
		if err := os.MkdirAll(filepath.Join(logDir, d), 0o755); err != nil {
			f.Fatal(err)
		}
	}
	for _, file := range []string{"nginx/0.log", "file"} {
		if err := os.WriteFile(filepath.Join(logDir, file), nil, 0o644); err != nil {
			f.Fatal(err)
		}
	}
	for link, target := range map[string]string{"link": "/", "nginx/1.log": "/etc/passwd", "loop": "loop"} {
		if err := os.Symlink(target, filepath.Join(logDir, link)); err != nil {
			f.Fatal(err)
		}
	}
	sb := fuzzSandbox(logDir)
	f.Fuzz(func(t *testing.T, data []byte, name, logPath, hostPath, containerPath string) {
		cfg := &runtimeapi.ContainerConfig{}
		_ = proto.Unmarshal(data, cfg)
		if cfg.Metadata == nil {
			cfg.Metadata = &runtimeapi.ContainerMetadata{}
		}
		if name != "" {
			cfg.Metadata.Name = name
		}
		if logPath != "" {
			cfg.LogPath = logPath
		}
		if hostPath != "" || containerPath != "" {
			cfg.Mounts = append(cfg.Mounts, &runtimeapi.Mount{HostPath: hostPath, ContainerPath: containerPath})
		}
		full, err := checkCreateContainer(cfg, sb)
		if err != nil {
			requireKind(t, err)
			return
		}

		n := cfg.GetMetadata().GetName()
		safeName(t, "container name", n)
		if len(n) > maxContainerNameLength {
			t.Fatalf("container name of %d characters accepted", len(n))
		}
		if parts := strings.Split(containerName(cfg.GetMetadata(), sb.GetMetadata()), "_"); len(parts) != 5 || parts[0] != n {
			t.Fatalf("container name %q does not split into the container's and its pod's names", containerName(cfg.GetMetadata(), sb.GetMetadata()))
		}
		if cfg.GetLogPath() != "" {
			rel, err := filepath.Rel(logDir, full)
			if err != nil || rel == "." || rel == ".." || strings.HasPrefix(rel, "../") || strings.ContainsRune(full, 0) {
				t.Fatalf("log path %q resolved to %q, outside the log directory %s", cfg.GetLogPath(), full, logDir)
			}
			// conmon must be able to open it by its path.
			if len(full) >= unix.PathMax {
				t.Fatalf("log path of %d bytes accepted", len(full))
			}
			for _, name := range strings.Split(rel, "/") {
				if len(name) > unix.NAME_MAX {
					t.Fatalf("log path %q accepted with a name of %d bytes", cfg.GetLogPath(), len(name))
				}
			}
			if fi, err := os.Lstat(full); err == nil && !fi.Mode().IsRegular() {
				t.Fatalf("log path %q accepted: it is a %s", cfg.GetLogPath(), fi.Mode().Type())
			}
		}
		for _, m := range cfg.GetMounts() {
			for _, p := range []string{m.GetHostPath(), m.GetContainerPath()} {
				if !filepath.IsAbs(p) || hasDotDot(p) || strings.ContainsRune(p, 0) {
					t.Fatalf("mount path %q accepted", p)
				}
			}
		}
	})
}

// hasDotDot: p has a ".." element.
func hasDotDot(p string) bool {
	for _, seg := range strings.Split(p, "/") {
		if seg == ".." {
			return true
		}
	}
	return false
}
