// Package controller is the seam between the CRI and the kinds of pods:
// a Controller runs the pods and containers of one kind of runtime handler
// (native pods on the host's auraed in pkg/controller/native, VM pods in
// pkg/controller/vm), in this package's own types. The CRI picks one by
// runtime handler and never asks which it got; everything that differs
// between kinds (where a pod's namespaces are, how its network reaches
// it, where a container's files are seen, how to reach a port) is the
// controller's.
package controller

import (
	"context"
	"io"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/aurae-runtime/aurae-cri/pkg/ocispec"
)

// Controller runs the pods and containers of one kind of runtime handler.
// Errors wrap errdefs sentinels; unknown ids are NotFound except where a
// method says otherwise.
type Controller interface {
	// CreatePod makes the pod's cgroup and namespaces (and, for a VM pod,
	// its VM); its network namespace is then ready for CNI.
	CreatePod(ctx context.Context, spec PodSpec) (Pod, error)
	// StartPod finishes the pod once CNI has set up its network (net is
	// nil for a pod on the node's network): a VM pod bridges it into its
	// VM here. RemovePod undoes it.
	StartPod(ctx context.Context, podID string, net *Network) error
	// StopPod stops what keeps the pod alive beyond its containers (a VM);
	// its namespaces stay until RemovePod.
	StopPod(ctx context.Context, podID string) error
	// RemovePod frees everything of the pod; an unknown pod is not an error.
	RemovePod(ctx context.Context, podID string) error
	// ListPods is what the controller runs, for reconciliation at start.
	ListPods(ctx context.Context) ([]PodState, error)

	// PrepareContainer makes what a new container of the pod needs visible
	// to the runtime that will run it (a VM pod shares the rootfs, the log
	// dir and the mounts' sources into its VM) and answers the pod's facts
	// from which ocispec builds the container's whole spec. RemoveContainer
	// undoes it.
	PrepareContainer(ctx context.Context, podID string, c ContainerFiles) (ocispec.PodFacts, error)
	// StartContainer creates and starts a prepared container with its spec.
	StartContainer(ctx context.Context, podID string, c Container) (Started, error)
	// StopContainer stops a container: its stop signal (a name such as
	// "SIGQUIT"; "" is SIGTERM), timeout, SIGKILL. Stopping a stopped or
	// unknown container succeeds.
	StopContainer(ctx context.Context, containerID string, timeout time.Duration, signal string) error
	// RemoveContainer deletes a stopped (or never started) container and
	// what PrepareContainer made; an unknown id is not an error.
	RemoveContainer(ctx context.Context, podID, containerID string) error
	// ContainerStatus is the container's state as its runtime knows it.
	ContainerStatus(ctx context.Context, containerID string) (ContainerState, error)
	// ExecSync runs argv in a running container and returns its output.
	ExecSync(ctx context.Context, containerID string, argv []string, timeout time.Duration) (ExecResult, error)
	// ContainerStats reads the container's CPU and memory use.
	ContainerStats(ctx context.Context, containerID string) (Stats, error)
	// UpdateContainerResources changes a running container's limits.
	UpdateContainerResources(ctx context.Context, containerID string, res *specs.LinuxResources) error
	// UpdatePodResources gives a ready pod the pod-level resources of an
	// in-place resize, as a whole (what is not asked for is lifted). What
	// the pod's kind cannot give (a VM that would have to grow) is refused
	// with FailedPrecondition, before anything changes.
	UpdatePodResources(ctx context.Context, podID string, res PodResources) error
	// CheckpointContainer dumps a running container with CRIU into
	// imageDir (a directory it makes; absent on failure), bounded by ctx;
	// leaveRunning keeps it running. FailedPrecondition where the
	// controller or the machine cannot checkpoint (and says why).
	CheckpointContainer(ctx context.Context, containerID, imageDir string, leaveRunning bool) error
	// ReopenContainerLog makes the container's monitor reopen its log file.
	ReopenContainerLog(ctx context.Context, containerID string) error
	// Exec runs argv in a running container with its stdio streamed until
	// it exits, and returns its exit code (128+signal when killed).
	Exec(ctx context.Context, containerID string, argv []string, sio StreamIO) (int32, error)
	// Attach streams a running container's own stdio until it exits or ctx
	// ends.
	Attach(ctx context.Context, containerID string, sio StreamIO) error
	// PortForward connects to port on 127.0.0.1 in the pod's network (a VM
	// pod's guest) and copies both ways with stream until the pod's side
	// closes or ctx ends; it closes stream.
	PortForward(ctx context.Context, podID string, port int32, stream io.ReadWriteCloser) error
	// Events delivers what happens to the controller's containers from the
	// moment it returns until ctx ends. The channel closes when the source
	// is lost or the subscriber fell behind: the caller then resyncs (asks
	// ContainerStatus) and subscribes again.
	Events(ctx context.Context) (<-chan ContainerEvent, error)
}

// RootfsFreeAtExit is implemented by a controller whose containers stop
// using the host mount of their rootfs when they exit (RootfsFreeAtExit
// answers true): the OCI runtime ran the container in a mount namespace of
// its own. The CRI server then unmounts it at the exit, not at
// RemoveContainer. A VM pod's guest may still read its share.
type RootfsFreeAtExit interface {
	RootfsFreeAtExit() bool
}

// EventType is what happened to a container.
type EventType int

const (
	EventStarted EventType = iota + 1
	EventExited
	EventRemoved
)

// ContainerEvent is a change of a container, with its state then.
type ContainerEvent struct {
	Type      EventType
	Container ContainerState
}

// NamespaceMode is where a pod's namespace of one type comes from.
type NamespaceMode int

const (
	// NamespacePod is the pod's own, shared by its containers.
	NamespacePod NamespaceMode = iota
	// NamespaceContainer gives each container its own (pid only).
	NamespaceContainer
	// NamespaceNode is the node's.
	NamespaceNode
)

// PodSpec is what the CRI asks of a pod.
type PodSpec struct {
	ID string
	// RuntimeHandler is the RuntimeClass handler that chose the controller.
	RuntimeHandler string
	// CgroupParent is where the pod's cgroup goes ("kubepods/burstable").
	CgroupParent string
	Hostname     string
	DNS          DNS
	// Network, PID and IPC modes of the pod; UTS follows the network.
	Network, PID, IPC NamespaceMode
	Sysctls           map[string]string
	Labels            map[string]string
	Annotations       map[string]string
	// Resources is what the pod's containers ask for in sum (sizes a VM).
	Resources Resources
	// UserNamespace, when set, gives the pod a user namespace of its own
	// with these mappings (hostUsers: false).
	UserNamespace *UserNamespace
}

// UserNamespace is a pod user namespace's id mappings.
type UserNamespace struct {
	UIDs, GIDs []specs.LinuxIDMapping
}

// DNS is the pod's resolver configuration.
type DNS struct {
	Servers, Searches, Options []string
}

// Resources are a pod's CPU quota and period and memory limit (0: none).
type Resources struct {
	CPUPeriod, CPUQuota, MemoryLimitBytes int64
}

// Pod is what CreatePod made, as the host sees it.
type Pod struct {
	// NetNSPath is the network namespace CNI sets up on the host; "" for a
	// pod on the node's network.
	NetNSPath string
	// CgroupPath is the pod's cgroup on the host, below the hierarchy roots.
	CgroupPath string
	// CgroupDriver is the cgroup driver that made the pod's cgroups
	// ("cgroupfs" or "systemd"); "" when the controller does not say.
	CgroupDriver string
	// UserNamespacePath is the pod's pinned user namespace on the host, when
	// PodSpec.UserNamespace asked for one: the container rootfs is
	// id-mapped with it.
	UserNamespacePath string
}

// Network is what CNI set up in a pod's network namespace.
type Network struct {
	NetNSPath string
	IPs       []string
}

// PodState is a pod a controller runs.
type PodState struct {
	ID         string
	Containers []ContainerState
}

// ContainerFiles are the host paths of what a new container uses.
type ContainerFiles struct {
	ID string
	// Rootfs is the container's prepared rootfs directory on the host.
	Rootfs string
	// LogPath is the container's log file on the host ("" for none).
	LogPath string
	// Mounts are the container's bind mounts.
	Mounts []Mount
	// PIDTarget is the container whose pid namespace this one joins (pid
	// mode TARGET); "" for none. It must run.
	PIDTarget string
}

// Mount is a bind mount of a host path into a container.
type Mount struct {
	Source   string
	Readonly bool
}

// Container is a prepared container to start.
type Container struct {
	ID string
	// Spec is its OCI runtime spec as JSON, made by ocispec from the
	// controller's facts.
	Spec []byte
	// LogPath is the log file on the host, as given to PrepareContainer.
	LogPath string
	// LogStream: the runtime keeps the log in a file of its own, which the
	// caller follows (PodService.ContainerLog) and writes at LogPath
	// itself; the runtime is then not given LogPath (a VM pod's guest).
	LogStream  bool
	Tty, Stdin bool
	// RestoreFrom, when set, is a directory of CRIU images (as
	// CheckpointContainer wrote them): the container's process is restored
	// from them instead of started from the spec.
	RestoreFrom string
}

// Started is a container that StartContainer started.
type Started struct {
	// Pid is its init's pid as its runtime sees it.
	Pid int
}

// State is a container's state in its runtime.
type State int

const (
	StateUnknown State = iota
	StateCreated
	StateRunning
	StateExited
)

// ContainerState is a container as its runtime knows it.
type ContainerState struct {
	ID, PodID string
	State     State
	Pid       int
	ExitCode  int32
	// StartedAt is zero until it started; FinishedAt until it exited.
	StartedAt, FinishedAt time.Time
	// Reason is "Completed", "Error" or "OOMKilled" once exited.
	Reason, Message string
}

// ExecResult is what ExecSync answers.
type ExecResult struct {
	Stdout, Stderr []byte
	ExitCode       int32
}

// Stats is a container's resource use at Timestamp.
type Stats struct {
	Timestamp             time.Time
	CPUUsageNanos         uint64
	MemoryWorkingSetBytes uint64
	// The rest feeds the CRI's cAdvisor-compatible metrics; zero where the
	// runtime does not count it.
	CPUUserNanos, CPUSystemNanos                             uint64
	CPUPeriods, CPUThrottledPeriods, CPUThrottledNanos       uint64
	MemoryUsageBytes, MemoryMaxUsageBytes, MemoryCacheBytes  uint64
	MemoryRSSBytes, MemorySwapBytes, MemoryMappedFileBytes   uint64
	MemoryKernelBytes, MemoryFailcnt                         uint64
	MemoryPgfault, MemoryPgmajfault, OOMEvents               uint64
	Processes, Threads, ThreadsMax, FileDescriptors, Sockets uint64
	// Interfaces are those of the container's network namespace (its
	// pod's) but loopback.
	Interfaces []InterfaceStats
}

// InterfaceStats are a network interface's counters.
type InterfaceStats struct {
	Name                                    string
	RxBytes, RxPackets, RxErrors, RxDropped uint64
	TxBytes, TxPackets, TxErrors, TxDropped uint64
}

// TerminalSize is a terminal's columns and rows.
type TerminalSize struct {
	Width, Height uint16
}

// StreamIO is the client's side of an exec or attach: nil streams were not
// asked for. Resize, when not nil, delivers terminal size changes (tty).
type StreamIO struct {
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	Tty            bool
	Resize         <-chan TerminalSize
}
