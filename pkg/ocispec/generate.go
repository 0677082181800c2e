// Package ocispec turns a CRI container request into the OCI runtime spec of
// the container, as containerd's CRI plugin (internal/cri/server/
// container_create_linux.go, internal/cri/opts) and CRI-O build it.
//
// Generate is pure apart from these reads: the rootfs's /etc/passwd and
// /etc/group (user and group names), the host device nodes a container asks
// for (major/minor numbers), for a privileged container the host's /dev, a
// Localhost seccomp profile's file and, where the host has AppArmor, the
// list of loaded AppArmor profiles.
// It creates nothing: host paths of mounts must exist before the container
// starts, which is the pod runtime's job.
package ocispec

import (
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path"

	"github.com/containerd/errdefs"
	imagespec "github.com/opencontainers/image-spec/specs-go/v1"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// The CRI annotations containerd puts on a container's spec
// (internal/cri/annotations), read by runtimes such as kata.
const (
	AnnotationContainerType    = "io.kubernetes.cri.container-type"
	AnnotationSandboxID        = "io.kubernetes.cri.sandbox-id"
	AnnotationSandboxName      = "io.kubernetes.cri.sandbox-name"
	AnnotationSandboxNamespace = "io.kubernetes.cri.sandbox-namespace"
	AnnotationSandboxUID       = "io.kubernetes.cri.sandbox-uid"
	AnnotationContainerName    = "io.kubernetes.cri.container-name"
	AnnotationImageName        = "io.kubernetes.cri.image-name"

	// ContainerTypeContainer is the value of AnnotationContainerType for a
	// container of a pod (as opposed to containerd's "sandbox" pause container).
	ContainerTypeContainer = "container"
)

// Input is everything Generate needs to know about one container.
type Input struct {
	// ID is the container id.
	ID string
	// SandboxID is the id of the pod the container belongs to
	// (the io.kubernetes.cri.sandbox-id annotation).
	SandboxID string
	// ImageName is the image reference the container runs, as resolved by
	// the image service (the io.kubernetes.cri.image-name annotation);
	// "" → Config.Image.Image.
	ImageName string

	Config  *runtimeapi.ContainerConfig
	Sandbox *runtimeapi.PodSandboxConfig
	Image   imagespec.ImageConfig

	// Pod is what the pod's controller says about the pod: namespaces,
	// cgroup, OOM floor, shared files, where the rootfs and mounts are.
	Pod PodFacts
	// RootfsReadonly makes the rootfs read-only; it is also read-only when
	// Config.Linux.SecurityContext.ReadonlyRootfs is set.
	RootfsReadonly bool
	// RootfsHere is where the rootfs is mounted in this process's view,
	// to read /etc/passwd and /etc/group from ("" → Pod.RootfsPath; a VM
	// pod's Pod.RootfsPath is the guest's). RootFS, when set, is read
	// instead (tests).
	RootfsHere string
	RootFS     fs.FS

	// PidsLimit is the pids cgroup limit; 0 means none (CRI-O's pids_limit:
	// the CRI has no per-container field for it).
	PidsLimit int64
	// SwapAccounting says the host accounts swap in the memory cgroup
	// (memory.memsw.* on v1, memory.swap.max on v2). When true, a memory
	// limit also limits memory+swap to the same value unless the request
	// names a swap limit, as containerd does; when false no swap limit is
	// written at all (runc would fail writing a file that does not exist).
	SwapAccounting bool
	// AllCapabilities is what a privileged container, or an "ALL" in the
	// added capabilities, gets: the runtime's own capability set
	// (CurrentCapabilities), as containerd uses cap.Current(). Nil means
	// every capability this package knows, which fails in runc when the
	// runtime lacks one of them.
	AllCapabilities []string
	// Host is what the host that runs the container offers (AppArmor,
	// SELinux, recursive read-only mounts): ProbeHost, or set by tests.
	Host HostFeatures
	// CDI resolves the CDI devices the container asks for (cdi_devices and
	// cdi.k8s.io/ annotations); nil refuses them.
	CDI CDI
	// ImageVolumes are the host sources of the request's image mounts
	// (Mount.image), by clean container path: the image's read-only
	// mount, or its image_sub_path below it, resolved by the caller; in a
	// pod with a user namespace, already id-mapped with it.
	ImageVolumes map[string]string
	// Adjustment is what NRI plugins changed (pkg/nri), applied last; nil
	// changes nothing.
	Adjustment *Adjustment
}

// Generate returns the OCI runtime spec of the container in. Errors that
// come from the request wrap errdefs.ErrInvalidArgument (or
// errdefs.ErrNotImplemented for what this runtime does not support).
func Generate(in Input) (*specs.Spec, error) {
	if in.Config == nil {
		return nil, invalid("container config is required")
	}
	if in.Pod.RootfsPath == "" || !path.IsAbs(in.Pod.RootfsPath) {
		return nil, invalid("rootfs path %q is not absolute", in.Pod.RootfsPath)
	}
	sc := in.Config.GetLinux().GetSecurityContext()
	if sc.GetPrivileged() && !in.Sandbox.GetLinux().GetSecurityContext().GetPrivileged() {
		return nil, invalid("privileged container %q in a pod that is not privileged", in.Config.GetMetadata().GetName())
	}

	s := &specs.Spec{
		Version: ociVersion(in.Pod.OCIVersion),
		Root: &specs.Root{
			Path:     in.Pod.RootfsPath,
			Readonly: in.RootfsReadonly || sc.GetReadonlyRootfs(),
		},
		Process: &specs.Process{
			Terminal:        in.Config.GetTty(),
			NoNewPrivileges: sc.GetNoNewPrivs(),
		},
		Linux: &specs.Linux{
			CgroupsPath: in.Pod.cgroupsPath(in.ID),
			Resources:   &specs.LinuxResources{},
		},
	}

	if in.Pod.DefaultPersonality {
		s.Linux.Personality = &specs.LinuxPersonality{Domain: specs.PerLinux}
	}

	ns, err := namespaces(in)
	if err != nil {
		return nil, err
	}
	s.Linux.Namespaces = ns.entries
	if ns.ownUTS {
		s.Hostname = hostname(in)
	}

	steps := []func(Input, *specs.Spec) error{
		checkSELinux,
		setArgs,
		setEnv,
		setCwd,
		setUser,
		setMounts,
		setDevices,
		setCapabilities,
		setSeccomp, // after setCapabilities: the default profile depends on them
		setAppArmor,
		setMaskedPaths,
		setResources,
		setCDI, // last: its edits add to the spec made from the request
	}
	for _, step := range steps {
		if err := step(in, s); err != nil {
			return nil, err
		}
	}
	if s.Linux.Sysctl, err = sysctls(in.Sandbox.GetLinux().GetSysctls(), ns); err != nil {
		return nil, err
	}
	s.Annotations = annotations(in)
	if err := applyAdjustment(in, s); err != nil {
		return nil, err
	}
	return s, nil
}

// annotations are the container's own, then containerd's CRI annotations,
// which win so that a request cannot forge them.
func annotations(in Input) map[string]string {
	a := make(map[string]string, len(in.Config.GetAnnotations())+7)
	maps.Copy(a, in.Config.GetAnnotations())
	image := in.ImageName
	if image == "" {
		image = in.Config.GetImage().GetImage()
	}
	md := in.Sandbox.GetMetadata()
	a[AnnotationContainerType] = ContainerTypeContainer
	a[AnnotationSandboxID] = in.SandboxID
	a[AnnotationSandboxName] = md.GetName()
	a[AnnotationSandboxNamespace] = md.GetNamespace()
	a[AnnotationSandboxUID] = md.GetUid()
	a[AnnotationContainerName] = in.Config.GetMetadata().GetName()
	a[AnnotationImageName] = image
	return a
}

// hostname is the pod's hostname, or the node's when the pod names none.
func hostname(in Input) string {
	if in.Pod.Hostname != "" {
		return in.Pod.Hostname
	}
	if h := in.Sandbox.GetHostname(); h != "" {
		return h
	}
	h, _ := os.Hostname()
	return h
}

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{errdefs.ErrInvalidArgument}, args...)...)
}

func unsupported(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{errdefs.ErrNotImplemented}, args...)...)
}
