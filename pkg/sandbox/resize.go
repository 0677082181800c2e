package sandbox

import (
	"fmt"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// CommitResize records the pod-level resources UpdatePodSandboxResources
// applied to a pod (its config's Linux.Overhead and Linux.Resources, and
// Status.ResourcesApplied) and completes its resize intent, in one
// transaction.
func (s *Store) CommitResize(id string, overhead, resources *runtimeapi.LinuxContainerResources) (Sandbox, error) {
	defer s.change()()
	full, err := resolve(s.sandboxes, id, "sandbox")
	if err != nil {
		return Sandbox{}, err
	}
	sb := *s.sandboxes[full]
	cfg := proto.Clone(sb.Config).(*runtimeapi.PodSandboxConfig)
	if cfg.Linux == nil {
		cfg.Linux = &runtimeapi.LinuxPodSandboxConfig{}
	}
	cfg.Linux.Overhead, cfg.Linux.Resources = overhead, resources
	sb.Config = cfg
	sb.Status.ResourcesApplied = true
	b, err := protojson.Marshal(cfg)
	if err != nil {
		return sb, err
	}
	_, pending := s.intents[full]
	if err := s.putDone(bucketSandboxes, sb.ID, &sb, b, pending); err != nil {
		return sb, fmt.Errorf("persist sandbox %q: %w", sb.ID, err)
	}
	s.rewriteRecord(recordSandbox, sb.ID, &sb, b)
	s.apply(func() {
		s.sandboxes[full] = &sb
		delete(s.intents, full)
	})
	return sb, nil
}
