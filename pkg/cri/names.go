package cri

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/containerd/errdefs"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// newID returns a 64-hex-digit id, as the kubelet and crictl expect.
func newID() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// sandboxName is the pod's reserved name; it carries its Kubernetes identity
// so that a retried RunPodSandbox finds the pod it already made.
func sandboxName(m *runtimeapi.PodSandboxMetadata) string {
	return strings.Join([]string{m.GetName(), m.GetNamespace(), m.GetUid(), fmt.Sprint(m.GetAttempt())}, "_")
}

func containerName(c *runtimeapi.ContainerMetadata, pod *runtimeapi.PodSandboxMetadata) string {
	return strings.Join([]string{c.GetName(), pod.GetName(), pod.GetNamespace(), pod.GetUid(), fmt.Sprint(c.GetAttempt())}, "_")
}

func checkSandboxMetadata(m *runtimeapi.PodSandboxMetadata) error {
	if m == nil {
		return fmt.Errorf("sandbox metadata is missing: %w", errdefs.ErrInvalidArgument)
	}
	for k, v := range map[string]string{"name": m.GetName(), "namespace": m.GetNamespace(), "uid": m.GetUid()} {
		if v == "" {
			return fmt.Errorf("sandbox metadata %s is empty: %w", k, errdefs.ErrInvalidArgument)
		}
		if strings.ContainsAny(v, "_/\x00") {
			return fmt.Errorf("sandbox metadata %s %q has '_', '/' or NUL: %w", k, v, errdefs.ErrInvalidArgument)
		}
	}
	return nil
}

func checkContainerMetadata(m *runtimeapi.ContainerMetadata) error {
	if m == nil || m.GetName() == "" {
		return fmt.Errorf("container metadata name is missing: %w", errdefs.ErrInvalidArgument)
	}
	if strings.ContainsAny(m.GetName(), "_/\x00") {
		return fmt.Errorf("container name %q has '_', '/' or NUL: %w", m.GetName(), errdefs.ErrInvalidArgument)
	}
	return nil
}

// cleanRelative checks a path that must stay inside a directory: relative,
// without "..", no NUL.
func cleanRelative(what, p string) (string, error) {
	if p == "" {
		return "", nil
	}
	if filepath.IsAbs(p) || strings.ContainsRune(p, 0) {
		return "", fmt.Errorf("%s %q must be a relative path: %w", what, p, errdefs.ErrInvalidArgument)
	}
	for _, seg := range strings.Split(p, "/") {
		if seg == ".." {
			return "", fmt.Errorf("%s %q must not contain '..': %w", what, p, errdefs.ErrInvalidArgument)
		}
	}
	return filepath.Clean(p), nil
}

// checkAbsolute checks a path that names a place on the host or in a
// container: absolute, without "..", no NUL.
func checkAbsolute(what, p string) error {
	if !filepath.IsAbs(p) || strings.ContainsRune(p, 0) {
		return fmt.Errorf("%s %q must be an absolute path: %w", what, p, errdefs.ErrInvalidArgument)
	}
	for _, seg := range strings.Split(p, "/") {
		if seg == ".." {
			return fmt.Errorf("%s %q must not contain '..': %w", what, p, errdefs.ErrInvalidArgument)
		}
	}
	return nil
}
