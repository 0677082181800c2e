package ocispec

import (
	"fmt"
	"slices"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// DefaultAppArmorProfile is the AppArmor profile a container gets for
// RuntimeDefault where the host has AppArmor. This runtime does not load
// it: the node's administrator does (apparmor_parser), and a container that
// asks for RuntimeDefault while it is not loaded is refused
// (FailedPrecondition). containerd and CRI-O load their own
// ("cri-containerd.apparmor.d", "crio-default") from a built-in template.
const DefaultAppArmorProfile = "aurae-default"

// setAppArmor sets process.apparmorProfile from the container's apparmor
// (then apparmor_profile), else the pod's:
//
//   - no AppArmor on the host (Input.Host.AppArmor false): Localhost is
//     refused (InvalidArgument), RuntimeDefault, Unconfined and unset are
//     nothing to do;
//   - AppArmor: Localhost names a loaded profile (else InvalidArgument);
//     RuntimeDefault is DefaultAppArmorProfile, which must be loaded (else
//     FailedPrecondition); unset is DefaultAppArmorProfile when it is
//     loaded, else none; Unconfined is none. A privileged container gets no
//     default profile, as in containerd.
func setAppArmor(in Input, s *specs.Spec) error {
	sc := in.Config.GetLinux().GetSecurityContext()
	field, p, deprecated := "apparmor", sc.GetApparmor(), sc.GetApparmorProfile() //nolint:staticcheck // deprecated, still honoured
	if p == nil && deprecated == "" {
		psc := in.Sandbox.GetLinux().GetSecurityContext()
		field, p = "pod apparmor", psc.GetApparmor()
	}
	unset := p == nil && deprecated == ""
	kind, name, err := securityProfile(field, p, deprecated)
	if err != nil {
		return err
	}
	if unset {
		kind = profileKindRuntimeDefault
	}
	if !in.Host.AppArmor {
		if kind == profileKindLocalhost {
			return invalid("%s: localhost profile %q: AppArmor is not enabled on this host", field, name)
		}
		return nil
	}
	if kind == profileKindNone || (kind == profileKindRuntimeDefault && sc.GetPrivileged()) {
		return nil
	}
	list := in.Host.AppArmorProfiles
	if list == nil {
		list = loadedAppArmorProfiles
	}
	loaded, err := list()
	if err != nil {
		return fmt.Errorf("%w: list the loaded AppArmor profiles: %w", errdefs.ErrFailedPrecondition, err)
	}
	switch kind {
	case profileKindLocalhost:
		if !slices.Contains(loaded, name) {
			return invalid("%s: AppArmor profile %q is not loaded", field, name)
		}
		s.Process.ApparmorProfile = name
	case profileKindRuntimeDefault:
		if !slices.Contains(loaded, DefaultAppArmorProfile) {
			if unset {
				return nil
			}
			return fmt.Errorf("%w: %s: RuntimeDefault: the default AppArmor profile %q is not loaded on this host (this runtime does not load it)",
				errdefs.ErrFailedPrecondition, field, DefaultAppArmorProfile)
		}
		s.Process.ApparmorProfile = DefaultAppArmorProfile
	}
	return nil
}

// checkSELinux refuses SELinux labels (the container's or the pod's
// selinux_options, a mount's selinux_relabel) where SELinux is enabled:
// this runtime does not label processes or files. Where SELinux is not
// enabled they are ignored, as containerd and CRI-O ignore them: there is
// nothing to label with.
func checkSELinux(in Input, _ *specs.Spec) error {
	if !in.Host.SELinux {
		return nil
	}
	for field, o := range map[string]*runtimeapi.SELinuxOption{
		"selinux_options":     in.Config.GetLinux().GetSecurityContext().GetSelinuxOptions(),
		"pod selinux_options": in.Sandbox.GetLinux().GetSecurityContext().GetSelinuxOptions(),
	} {
		if o.GetUser() != "" || o.GetRole() != "" || o.GetType() != "" || o.GetLevel() != "" {
			return fmt.Errorf("%w: %s: SELinux labels are not supported", errdefs.ErrFailedPrecondition, field)
		}
	}
	for _, m := range in.Config.GetMounts() {
		if m.GetSelinuxRelabel() {
			return fmt.Errorf("%w: mount at %q: selinux_relabel: SELinux labels are not supported", errdefs.ErrFailedPrecondition, m.GetContainerPath())
		}
	}
	return nil
}
