package sandbox

import (
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// TestCommitResize: a resize intent survives a restart until its commit,
// which records the resources in the pod's config and drops the intent in
// one transaction.
func TestCommitResize(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	addReadyPod(t, s, "p1")
	res := &runtimeapi.LinuxContainerResources{CpuQuota: 50000, CpuPeriod: 100000, MemoryLimitInBytes: 64 << 20}
	over := &runtimeapi.LinuxContainerResources{MemoryLimitInBytes: 16 << 20}
	in := Intent{Kind: IntentResize, ID: "p1", CreatedAt: time.Now(),
		Config: &runtimeapi.PodSandboxConfig{Linux: &runtimeapi.LinuxPodSandboxConfig{Overhead: over, Resources: res}}}
	if err := s.PutIntent(in); err != nil {
		t.Fatal(err)
	}
	s = reopen(t, s, dir)
	got := s.Intents()
	if len(got) != 1 || got[0].Kind != IntentResize || !proto.Equal(got[0].Config.GetLinux().GetResources(), res) {
		t.Fatalf("intents after restart: %+v", got)
	}
	if _, err := s.CommitResize("p1", over, res); err != nil {
		t.Fatal(err)
	}
	s = reopen(t, s, dir)
	defer func() { _ = s.Close() }()
	if left := s.Intents(); len(left) != 0 {
		t.Fatalf("intents after the commit: %+v", left)
	}
	p, err := s.Sandbox("p1")
	if err != nil {
		t.Fatal(err)
	}
	if !p.Status.ResourcesApplied || !proto.Equal(p.Config.GetLinux().GetResources(), res) || !proto.Equal(p.Config.GetLinux().GetOverhead(), over) ||
		p.Config.GetMetadata().GetName() != "pod" {
		t.Fatalf("pod after the commit: %+v %v", p.Status, p.Config)
	}
	if _, err := s.CommitResize("nosuch", over, res); err == nil {
		t.Fatal("commit of an unknown pod succeeded")
	}
}
