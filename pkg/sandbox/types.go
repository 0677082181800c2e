// Package sandbox keeps aurae-cri's pods (sandboxes) and containers: their
// immutable metadata, their status (changed only through Update), the names
// reserved for them, and their persistence in a bbolt file so that a
// restarted aurae-cri knows them again.
package sandbox

import (
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Sandbox is a pod. Its fields are fixed at RunPodSandbox; Status changes
// only through Store.UpdateSandbox.
//
// States: (CREATING, an Intent) → READY (RunPodSandbox succeeded) →
// NOTREADY (StopPodSandbox, or its network or namespaces are gone) →
// (REMOVING, Status.Removing) → removed (RemovePodSandbox).
type Sandbox struct {
	ID             string                       `json:"id"`
	Name           string                       `json:"name"`
	Config         *runtimeapi.PodSandboxConfig `json:"-"`
	RuntimeHandler string                       `json:"runtime_handler"`
	CreatedAt      time.Time                    `json:"created_at"`
	Status         SandboxStatus                `json:"status"`
}

// SandboxStatus is what changes in a pod's life.
type SandboxStatus struct {
	State runtimeapi.PodSandboxState `json:"state"`
	// NetNSPath is the pod's network namespace ("" for host network).
	NetNSPath string `json:"netns_path,omitempty"`
	// CgroupPath is the pod's cgroup on the host.
	CgroupPath string   `json:"cgroup_path,omitempty"`
	IPs        []string `json:"ips,omitempty"`
	// NetworkUp is true from CNI setup until its teardown, which must
	// happen exactly once.
	NetworkUp bool `json:"network_up,omitempty"`
	// UserNSPath is the pod's pinned user namespace ("" for the node's):
	// its containers' rootfs is id-mapped with it.
	UserNSPath string `json:"userns_path,omitempty"`
	// Removing is set once RemovePodSandbox began (REMOVING), before its
	// first side effect: recovery finishes the removal of a pod left so.
	Removing bool `json:"removing,omitempty"`
	// ResourcesApplied: Config.Linux.Overhead and Config.Linux.Resources
	// are what the last UpdatePodSandboxResources applied to the pod; until
	// the first, the pod's cgroup has no pod-level limits of aurae-cri's
	// (those of its creation only sized a VM).
	ResourcesApplied bool `json:"resources_applied,omitempty"`
	// CleanupError is why the last stop could not finish (its network or
	// its runtime's stop failed): the pod is NOTREADY, the error is in its
	// verbose status, and a later StopPodSandbox or RemovePodSandbox
	// retries. Cleared once a stop finishes.
	CleanupError string `json:"cleanup_error,omitempty"`
}

// Container is a container of a pod. Its fields are fixed at
// CreateContainer; Status changes only through Store.UpdateContainer.
//
// States: (CREATING, an Intent) → CREATED → RUNNING (StartContainer) →
// EXITED (the process ended, or StopContainer) → (REMOVING,
// Status.Removing) → removed (RemoveContainer). UNKNOWN when its runtime
// cannot say.
type Container struct {
	ID        string                      `json:"id"`
	SandboxID string                      `json:"sandbox_id"`
	Name      string                      `json:"name"`
	Config    *runtimeapi.ContainerConfig `json:"-"`
	// ImageRef is the image as the request named it; ImageID its config
	// digest; ImageName the repo tag or digest it resolved to.
	ImageRef  string `json:"image_ref"`
	ImageID   string `json:"image_id"`
	ImageName string `json:"image_name"`
	LogPath   string `json:"log_path,omitempty"`
	// Spec is the OCI runtime spec (JSON) the container is started with.
	Spec []byte `json:"spec"`
	// RestoreFrom is the directory of CRIU images the container is
	// restored from at start (CreateContainer named a checkpoint archive).
	RestoreFrom string `json:"restore_from,omitempty"`
	// StopSignal is the signal that stops it ("SIGQUIT"), resolved at
	// creation from its config, else its image; "" is SIGTERM.
	StopSignal string `json:"stop_signal,omitempty"`
	// ImageVolumes are the image volumes it mounts (Mount.image): it is
	// one of their users until its removal.
	ImageVolumes []ImageVolume `json:"image_volumes,omitempty"`
	// UpperDir is its rootfs snapshot's writable layer (an overlay's
	// upperdir; "" for other snapshots), its usage in stats: the rootfs
	// is unmounted when a native container exits.
	UpperDir  string          `json:"upper_dir,omitempty"`
	CreatedAt time.Time       `json:"created_at"`
	Status    ContainerStatus `json:"status"`
}

// ImageVolume is an image mounted into a container (a Mount.image): the
// view snapshot Key of image ImageID, mounted at ContainerPath from
// Source (the view's host mount, or the image_sub_path below it).
type ImageVolume struct {
	ContainerPath string `json:"container_path"`
	ImageID       string `json:"image_id"`
	Key           string `json:"key"`
	Source        string `json:"source"`
}

// ContainerStatus is what changes in a container's life.
type ContainerStatus struct {
	State      runtimeapi.ContainerState `json:"state"`
	Pid        int                       `json:"pid,omitempty"`
	StartedAt  time.Time                 `json:"started_at,omitzero"`
	FinishedAt time.Time                 `json:"finished_at,omitzero"`
	ExitCode   int32                     `json:"exit_code"`
	Reason     string                    `json:"reason,omitempty"`
	Message    string                    `json:"message,omitempty"`
	// Removing is set once RemoveContainer began (REMOVING), before its
	// first side effect: the container must not be started again, and
	// recovery finishes the removal of a container left so.
	Removing bool `json:"removing,omitempty"`
}
