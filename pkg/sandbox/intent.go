package sandbox

import (
	"encoding/json"
	"fmt"
	"sort"
	"time"

	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/encoding/protojson"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// IntentKind is what an Intent creates.
type IntentKind string

const (
	IntentSandbox   IntentKind = "sandbox"
	IntentContainer IntentKind = "container"
	// IntentResize is an UpdatePodSandboxResources in progress on pod ID:
	// Config.Linux.Overhead and Config.Linux.Resources are what it applies.
	// Unlike the others it is finished, not undone, at recovery: the pod
	// exists and the kubelet was told nothing.
	IntentResize IntentKind = "resize"
)

// IntentCreating is the state of every Intent: the object is being made.
// (An object being removed is a stored one with Status.Removing set.)
const IntentCreating = "CREATING"

// Intent is a pod or container that RunPodSandbox or CreateContainer is
// making (state CREATING). It is written before the call's first side
// effect and updated before each further one with what is about to be
// made; it goes in the same transaction that stores the finished object,
// or once a failed call has undone everything. An Intent found at start is
// a call cut short (aurae-cri was killed): nobody got its id, so recovery
// undoes all it names.
//
// Each step is recorded before it begins, so it may not have happened:
// undoing it must succeed when there is nothing to undo.
type Intent struct {
	Kind  IntentKind `json:"kind"`
	State string     `json:"state"`
	// ID is the pod's or container's id; PodID a container's pod.
	ID             string    `json:"id"`
	PodID          string    `json:"pod_id,omitempty"`
	Name           string    `json:"name"`
	RuntimeHandler string    `json:"runtime_handler"`
	CreatedAt      time.Time `json:"created_at"`

	// ControllerPod: the pod's controller was asked to create pod ID. Only
	// such pods are ours to free.
	ControllerPod bool `json:"controller_pod,omitempty"`
	// Network: CNI ADD may have begun in NetNSPath (CNI DEL undoes it,
	// with Config's metadata, port mappings and DNS).
	Network   bool                         `json:"network,omitempty"`
	NetNSPath string                       `json:"netns_path,omitempty"`
	Config    *runtimeapi.PodSandboxConfig `json:"-"`

	// Rootfs: the container's rootfs snapshot (Snapshot) may have been
	// prepared and mounted at RootfsDir. Lease is the lease that held the
	// snapshot in intents of earlier versions (now a GC root of its own).
	Rootfs    bool   `json:"rootfs,omitempty"`
	Snapshot  string `json:"snapshot,omitempty"`
	Lease     string `json:"lease,omitempty"`
	RootfsDir string `json:"rootfs_dir,omitempty"`
	// ControllerContainer: the pod's controller may have been asked to
	// prepare the container (CreateContainer records it with the rest,
	// before its first side effect; the undo tolerates an unknown one).
	ControllerContainer bool `json:"controller_container,omitempty"`
	// ImageVolumes are the keys of the image volumes the container may
	// have begun to use: it counts as their user until the intent goes.
	ImageVolumes []string `json:"image_volumes,omitempty"`
}

var bucketIntents = []byte("intents")

// PutIntent writes (or replaces) the intent with in.ID, durably, before the
// side effect it announces.
func (s *Store) PutIntent(in Intent) error {
	if in.ID == "" {
		return fmt.Errorf("intent without an id")
	}
	in.State = IntentCreating
	var cfg []byte
	if in.Config != nil {
		var err error
		if cfg, err = protojson.Marshal(in.Config); err != nil {
			return err
		}
	}
	defer s.change()()
	if err := s.put(bucketIntents, in.ID, &in, cfg); err != nil {
		return fmt.Errorf("persist intent %s %q: %w", in.Kind, in.ID, err)
	}
	s.apply(func() { s.intents[in.ID] = &in })
	return nil
}

// DeleteIntent forgets an intent whose work is undone.
func (s *Store) DeleteIntent(id string) error {
	defer s.change()()
	if _, ok := s.intents[id]; !ok {
		return nil
	}
	if err := s.del(bucketIntents, id); err != nil {
		return fmt.Errorf("delete intent %q: %w", id, err)
	}
	s.apply(func() { delete(s.intents, id) })
	// A crash between the record of a new object and the commit that
	// stores it leaves the record of an object undone since.
	if _, ok := s.sandboxes[id]; !ok {
		s.dropRecord(recordSandbox, id)
	}
	if _, ok := s.containers[id]; !ok {
		s.dropRecord(recordContainer, id)
	}
	return nil
}

// Intents returns copies of the intents, oldest first.
func (s *Store) Intents() []Intent {
	s.mu.RLock()
	out := make([]Intent, 0, len(s.intents))
	for _, in := range s.intents {
		out = append(out, *in)
	}
	s.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool { return out[i].CreatedAt.Before(out[j].CreatedAt) })
	return out
}

// Intent returns a copy of the intent with id.
func (s *Store) Intent(id string) (Intent, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	in, ok := s.intents[id]
	if !ok {
		return Intent{}, false
	}
	return *in, true
}

func (s *Store) loadIntents(tx *bolt.Tx) error {
	return tx.Bucket(bucketIntents).ForEach(func(k, v []byte) error {
		var r record
		in := &Intent{}
		if err := json.Unmarshal(v, &r); err != nil {
			return fmt.Errorf("intent %s: %w", k, err)
		}
		if err := json.Unmarshal(r.Object, in); err != nil {
			return fmt.Errorf("intent %s: %w", k, err)
		}
		if len(r.Config) > 0 && string(r.Config) != "null" {
			in.Config = &runtimeapi.PodSandboxConfig{}
			if err := protojson.Unmarshal(r.Config, in.Config); err != nil {
				return fmt.Errorf("intent %s config: %w", k, err)
			}
		}
		s.intents[in.ID] = in
		return nil
	})
}
