package cri

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/containerd/errdefs"
	"k8s.io/apimachinery/pkg/util/validation"
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

// maxUIDLength bounds a pod's uid. Kubernetes makes uids as UUIDs (36
// characters; static pods a 32-digit hash) and does not validate their form;
// they become CNI_ARGS and part of names here, so they are held to the
// characters and a length any of those has, with room to spare.
const maxUIDLength = 128

// maxContainerNameLength bounds a container's name. The API server allows
// 63 (a DNS-1123 label); critest, the CRI's conformance suite, sends up to
// 86 ("container-with-RunAsGroup-without-RunAsUser-test-" and a UUID), so
// the bound is a DNS-1123 subdomain's.
const maxContainerNameLength = validation.DNS1123SubdomainMaxLength

// checkSandboxMetadata holds a pod's identity to the rules the Kubernetes
// API server applies (k8s.io/apimachinery/pkg/util/validation): the name a
// DNS-1123 subdomain (at most 253 characters), the namespace a DNS-1123 label
// (at most 63), the uid letters, digits, '-' and '.' (at most 128). They
// reach CNI as CNI_ARGS ("K=V;K=V"), the store's names ('_'-joined) and the
// logs: no ';', '=', '_', '/', space, control or non-ASCII character gets
// through. One difference: upper-case ASCII letters are accepted, as
// critest's pod names have them ("create-PodSandbox-for-container-…"); they
// carry no meaning in any of those places.
func checkSandboxMetadata(m *runtimeapi.PodSandboxMetadata) error {
	if m == nil {
		return fmt.Errorf("sandbox metadata is missing: %w", errdefs.ErrInvalidArgument)
	}
	if errs := validation.IsDNS1123Subdomain(asciiLower(m.GetName())); len(errs) > 0 {
		return fmt.Errorf("pod name %q: %s: %w", m.GetName(), strings.Join(errs, "; "), errdefs.ErrInvalidArgument)
	}
	if errs := validation.IsDNS1123Label(asciiLower(m.GetNamespace())); len(errs) > 0 {
		return fmt.Errorf("pod namespace %q: %s: %w", m.GetNamespace(), strings.Join(errs, "; "), errdefs.ErrInvalidArgument)
	}
	if err := checkUID(m.GetUid()); err != nil {
		return err
	}
	return nil
}

func checkUID(uid string) error {
	if uid == "" || len(uid) > maxUIDLength {
		return fmt.Errorf("pod uid %q: must have 1 to %d characters: %w", uid, maxUIDLength, errdefs.ErrInvalidArgument)
	}
	allowed := func(r rune) bool {
		return r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '.'
	}
	for _, r := range uid {
		if !allowed(r) {
			return fmt.Errorf("pod uid %q: only letters, digits, '-' and '.' are allowed: %w", uid, errdefs.ErrInvalidArgument)
		}
	}
	return nil
}

// dns1123Label is a DNS-1123 label (as validation.IsDNS1123Label checks
// it), without its length bound.
var dns1123Label = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)

// checkContainerMetadata: a container's name is made as a DNS-1123 label
// is, as the API server requires of a pod's containers (letters, digits,
// '-'; a letter or digit first and last), upper case accepted and at most
// maxContainerNameLength long, for critest.
func checkContainerMetadata(m *runtimeapi.ContainerMetadata) error {
	if m == nil {
		return fmt.Errorf("container metadata is missing: %w", errdefs.ErrInvalidArgument)
	}
	name := m.GetName()
	if name == "" || len(name) > maxContainerNameLength || !dns1123Label.MatchString(asciiLower(name)) {
		return fmt.Errorf("container name %q: must be 1 to %d letters, digits or '-', beginning and ending with a letter or digit: %w",
			name, maxContainerNameLength, errdefs.ErrInvalidArgument)
	}
	return nil
}

// asciiLower lower-cases ASCII letters only: strings.ToLower would turn some
// non-ASCII runes (the Kelvin sign) into ASCII ones that pass the checks.
func asciiLower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c >= 'A' && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
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
