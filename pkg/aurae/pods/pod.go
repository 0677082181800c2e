package pods

import (
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	podsv0 "github.com/aurae-runtime/aurae-cri/api/pods/v0"
)

// pod is an allocated pod. spec and paths are immutable once allocated.
type pod struct {
	spec      *podsv0.Pod
	paths     *podsv0.AllocateResponse
	createdAt time.Time
	// reserved: the id is taken by an Allocate still in progress.
	reserved bool

	// mu serializes the pod's changes: Start of a container, Free.
	mu      sync.Mutex
	freed   bool
	holder  holderRef
	holderW chan struct{} // closed when a holder we started was reaped
}

// holderRef names the process that holds the pod's pid namespace, when the
// pod shares one (pid + start time, which survive a restart).
type holderRef struct {
	Pid   int    `json:"pid,omitempty"`
	Start uint64 `json:"start,omitempty"`
}

func (p *pod) listStatus() *podsv0.PodStatus {
	return &podsv0.PodStatus{
		Pod:       proto.Clone(p.spec).(*podsv0.Pod),
		Paths:     proto.Clone(p.paths).(*podsv0.AllocateResponse),
		CreatedAt: p.createdAt.UnixNano(),
	}
}

func (p *pod) ownsNet() bool {
	return p.spec.GetNamespaces().GetNetwork() == podsv0.NamespaceMode_NAMESPACE_MODE_POD
}

func (p *pod) ownsIPC() bool {
	return p.spec.GetNamespaces().GetIpc() == podsv0.NamespaceMode_NAMESPACE_MODE_POD
}

// ownsUTS: like containerd, a pod on the host's network keeps the host's
// hostname.
func (p *pod) ownsUTS() bool { return p.ownsNet() }

// ownsUser: the pod has a user namespace of its own (hostUsers: false).
func (p *pod) ownsUser() bool { return p.spec.GetUserNamespace() != nil }

func (p *pod) ownsPID() bool {
	return p.spec.GetNamespaces().GetPid() == podsv0.NamespaceMode_NAMESPACE_MODE_POD
}

// ownedNamespace is a namespace type a pod may own, and where its pinned
// file's path goes in the pod's AllocateResponse.
type ownedNamespace struct {
	on   bool
	kind string // as in /proc/<pid>/ns/<kind>
	dst  *string
}

// namespaceKinds are the kinds of namespace a pod pins (teardown unpins
// them all).
var namespaceKinds = []string{"net", "ipc", "uts", "pid", "user"}

// ownedNamespaces lists, in namespaceKinds' order, the namespaces a pod
// may own and whether it does.
func (p *pod) ownedNamespaces() []ownedNamespace {
	return []ownedNamespace{
		{p.ownsNet(), "net", &p.paths.NetworkNamespacePath},
		{p.ownsIPC(), "ipc", &p.paths.IpcNamespacePath},
		{p.ownsUTS(), "uts", &p.paths.UtsNamespacePath},
		{p.ownsPID(), "pid", &p.paths.PidNamespacePath},
		{p.ownsUser(), "user", &p.paths.UserNamespacePath},
	}
}
