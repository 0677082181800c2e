package ocispec

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/containerd/containerd/v2/contrib/seccomp"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// The deprecated profile strings of seccomp_profile_path and
// apparmor_profile (the kubelet's, before SecurityProfile).
const (
	profileRuntimeDefault = "runtime/default"
	profileDockerDefault  = "docker/default"
	profileUnconfined     = "unconfined"
	profileLocalhost      = "localhost/"
)

// maxSeccompProfileSize bounds a Localhost seccomp profile file.
const maxSeccompProfileSize = 1 << 20

// setSeccomp sets linux.seccomp as containerd's CRI does
// (internal/cri/server/container_create_linux.go): the container's
// seccomp, else its seccomp_profile_path, else the pod's (seccomp, then
// seccomp_profile_path). Unconfined and unset give none; RuntimeDefault
// gives containerd's default profile, filtered by the container's
// capabilities (so this step runs after setCapabilities); Localhost reads
// the JSON profile at the absolute path named. A privileged container gets
// none, whatever it asks for.
func setSeccomp(in Input, s *specs.Spec) error {
	if in.Config.GetLinux().GetSecurityContext().GetPrivileged() {
		return nil
	}
	kind, ref, err := seccompProfile(in)
	if err != nil {
		return err
	}
	switch kind {
	case profileKindNone:
		return nil
	case profileKindRuntimeDefault:
		s.Linux.Seccomp = seccomp.DefaultProfile(s)
		return nil
	}
	p, err := readSeccompProfile(ref)
	if err != nil {
		return err
	}
	s.Linux.Seccomp = p
	return nil
}

type profileKind int

const (
	profileKindNone profileKind = iota
	profileKindRuntimeDefault
	profileKindLocalhost
)

// seccompProfile is the profile the container asks for, with the pod's as
// fallback.
func seccompProfile(in Input) (profileKind, string, error) {
	sc := in.Config.GetLinux().GetSecurityContext()
	// The deprecated seccomp_profile_path is still what older kubelets send.
	path := sc.GetSeccompProfilePath() //nolint:staticcheck // deprecated, still honoured
	if sc.GetSeccomp() != nil || path != "" {
		return securityProfile("seccomp", sc.GetSeccomp(), path)
	}
	psc := in.Sandbox.GetLinux().GetSecurityContext()
	return securityProfile("pod seccomp", psc.GetSeccomp(), psc.GetSeccompProfilePath()) //nolint:staticcheck // deprecated, still honoured
}

// securityProfile reads a SecurityProfile, or when it is nil the
// deprecated profile string: "" and "unconfined" are none,
// "runtime/default" and "docker/default" the runtime's default,
// "localhost/<path>" a profile of the host. field names it in errors.
func securityProfile(field string, p *runtimeapi.SecurityProfile, deprecated string) (profileKind, string, error) {
	if p != nil {
		switch p.GetProfileType() {
		case runtimeapi.SecurityProfile_RuntimeDefault:
			return profileKindRuntimeDefault, "", nil
		case runtimeapi.SecurityProfile_Unconfined:
			return profileKindNone, "", nil
		case runtimeapi.SecurityProfile_Localhost:
			if p.GetLocalhostRef() == "" {
				return 0, "", invalid("%s: profile type Localhost without a localhost_ref", field)
			}
			return profileKindLocalhost, p.GetLocalhostRef(), nil
		default:
			return 0, "", invalid("%s: unknown profile type %d", field, p.GetProfileType())
		}
	}
	switch {
	case deprecated == "" || deprecated == profileUnconfined:
		return profileKindNone, "", nil
	case deprecated == profileRuntimeDefault || deprecated == profileDockerDefault:
		return profileKindRuntimeDefault, "", nil
	case strings.HasPrefix(deprecated, profileLocalhost):
		ref := strings.TrimPrefix(deprecated, profileLocalhost)
		if ref == "" {
			return 0, "", invalid("%s: profile %q names no profile", field, deprecated)
		}
		return profileKindLocalhost, ref, nil
	default:
		return 0, "", invalid("%s: unknown profile %q", field, deprecated)
	}
}

// readSeccompProfile reads and parses the seccomp profile at the absolute
// path file: a regular file of at most maxSeccompProfileSize bytes holding
// a runtime-spec LinuxSeccomp in JSON.
func readSeccompProfile(file string) (*specs.LinuxSeccomp, error) {
	if !filepath.IsAbs(file) {
		return nil, invalid("seccomp: localhost profile %q is not an absolute path", file)
	}
	// O_NONBLOCK: opening a FIFO must not wait for a writer.
	f, err := os.OpenFile(file, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, invalid("seccomp: localhost profile %q does not exist", file)
		}
		return nil, invalid("seccomp: localhost profile %q: %v", file, err)
	}
	defer func() { _ = f.Close() }()
	fi, err := f.Stat()
	if err != nil {
		return nil, invalid("seccomp: localhost profile %q: %v", file, err)
	}
	if !fi.Mode().IsRegular() {
		return nil, invalid("seccomp: localhost profile %q is not a regular file (%s)", file, fi.Mode().Type())
	}
	b, err := io.ReadAll(io.LimitReader(f, maxSeccompProfileSize+1))
	if err != nil {
		return nil, invalid("seccomp: read localhost profile %q: %v", file, err)
	}
	if len(b) > maxSeccompProfileSize {
		return nil, invalid("seccomp: localhost profile %q is larger than %d bytes", file, maxSeccompProfileSize)
	}
	var p specs.LinuxSeccomp
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&p); err != nil {
		return nil, invalid("seccomp: localhost profile %q is not a seccomp profile: %v", file, err)
	}
	if p.DefaultAction == "" {
		return nil, invalid("seccomp: localhost profile %q has no defaultAction", file)
	}
	return &p, nil
}
