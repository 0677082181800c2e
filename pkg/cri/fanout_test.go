package cri

import (
	"fmt"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/pkg/sandbox"
)

// startContainers runs a pod with n running containers c0…c<n-1>.
func (f *fixture) startContainers(t *testing.T, n int) string {
	t.Helper()
	pod, err := f.rt.RunPodSandbox(t.Context(), &runtimeapi.RunPodSandboxRequest{Config: podConfig("fan")})
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		id := fmt.Sprintf("c%d", i)
		c := &sandbox.Container{ID: id, SandboxID: pod.GetPodSandboxId(), Name: id + "_fan", Config: &runtimeapi.ContainerConfig{Metadata: &runtimeapi.ContainerMetadata{Name: id}},
			CreatedAt: time.Now(), Status: sandbox.ContainerStatus{State: runtimeapi.ContainerState_CONTAINER_CREATED}}
		if err := f.store.AddContainer(c); err != nil {
			t.Fatal(err)
		}
		if _, err := f.rt.StartContainer(t.Context(), &runtimeapi.StartContainerRequest{ContainerId: id}); err != nil {
			t.Fatal(err)
		}
	}
	return pod.GetPodSandboxId()
}

// TestStatsWithAWedgedPod: with one container's controller wedged,
// ListContainerStats and ListPodSandboxStats answer within statsWait with
// every other container's figures, the wedged one's last known figures,
// and no second call piles up behind the wedged one.
func TestStatsWithAWedgedPod(t *testing.T) {
	f := newFixture(t, true)
	podID := f.startContainers(t, 40)
	resp, err := f.rt.ListContainerStats(t.Context(), &runtimeapi.ListContainerStatsRequest{})
	if err != nil || len(resp.GetStats()) != 40 {
		t.Fatalf("stats: %v %v", resp, err)
	}
	f.ctrl.wedge("c7")
	defer f.ctrl.unwedge("c7")
	for round := range 3 {
		start := time.Now()
		resp, err := f.rt.ListContainerStats(t.Context(), &runtimeapi.ListContainerStatsRequest{})
		took := time.Since(start)
		if err != nil || len(resp.GetStats()) != 40 {
			t.Fatalf("stats with c7 wedged: %v %v", resp, err)
		}
		if took > statsWait+500*time.Millisecond {
			t.Fatalf("round %d: ListContainerStats took %v with one pod wedged", round, took)
		}
		for _, s := range resp.GetStats() {
			id := s.GetAttributes().GetId()
			if s.GetCpu() == nil {
				t.Fatalf("round %d: %s has no figures", round, id)
			}
			if id == "c7" && s.GetCpu().GetUsageCoreNanoSeconds().GetValue() != 1 {
				t.Fatalf("round %d: wedged c7 answers %v, want its last figures (1)", round, s.GetCpu())
			}
			if id != "c7" && s.GetCpu().GetUsageCoreNanoSeconds().GetValue() != uint64(round+2) {
				t.Fatalf("round %d: %s answers %v, want fresh figures", round, id, s.GetCpu())
			}
		}
	}
	f.ctrl.mu.Lock()
	calls := f.ctrl.statsCalls["c7"]
	f.ctrl.mu.Unlock()
	if calls != 2 {
		t.Errorf("c7 was asked %d times; want 2 (one call in flight while it is wedged)", calls)
	}
	start := time.Now()
	ps, err := f.rt.ListPodSandboxStats(t.Context(), &runtimeapi.ListPodSandboxStatsRequest{})
	if err != nil || len(ps.GetStats()) != 1 || time.Since(start) > statsWait+500*time.Millisecond {
		t.Fatalf("pod stats: %v %v after %v", ps, err, time.Since(start))
	}
	pod := ps.GetStats()[0]
	if pod.GetAttributes().GetId() != podID || len(pod.GetLinux().GetContainers()) != 40 || pod.GetLinux().GetMemory().GetWorkingSetBytes().GetValue() != 80 {
		t.Fatalf("pod stats: %v", pod)
	}
	one, err := f.rt.PodSandboxStats(t.Context(), &runtimeapi.PodSandboxStatsRequest{PodSandboxId: podID})
	if err != nil || one.GetStats().GetAttributes().GetId() != podID {
		t.Fatalf("PodSandboxStats: %v %v", one, err)
	}
}

// TestRecoverWithAWedgedPod: a restarted aurae-cri whose controller does
// not answer for one container recovers within the call's deadline, marks
// that container UNKNOWN and serves; once the pod answers again, the
// container is RUNNING again.
func TestRecoverWithAWedgedPod(t *testing.T) {
	f := newFixture(t, true)
	f.startContainers(t, 20)
	f.ctrl.exit("c3", 4, "")
	f.ctrl.wedge("c5")
	rt := f.runtime(t)
	start := time.Now()
	if err := rt.Recover(t.Context()); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > statusTimeout+2*time.Second {
		t.Fatalf("recovery took %v with one pod wedged", took)
	}
	state := func(id string) runtimeapi.ContainerState {
		st, err := rt.ContainerStatus(t.Context(), &runtimeapi.ContainerStatusRequest{ContainerId: id})
		if err != nil {
			t.Fatal(err)
		}
		return st.GetStatus().GetState()
	}
	if s := state("c5"); s != runtimeapi.ContainerState_CONTAINER_UNKNOWN {
		t.Fatalf("wedged c5 is %v after recovery, want UNKNOWN", s)
	}
	if s := state("c3"); s != runtimeapi.ContainerState_CONTAINER_EXITED {
		t.Fatalf("c3 is %v after recovery, want EXITED", s)
	}
	if s := state("c1"); s != runtimeapi.ContainerState_CONTAINER_RUNNING {
		t.Fatalf("c1 is %v after recovery, want RUNNING", s)
	}
	f.ctrl.unwedge("c5")
	deadline := time.Now().Add(10 * time.Second)
	for state("c5") != runtimeapi.ContainerState_CONTAINER_RUNNING {
		if time.Now().After(deadline) {
			t.Fatal("c5 stays UNKNOWN once its pod answers")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestRecoverServesWhenAControllerFails: a controller whose ListPods fails
// leaves its pods as recorded; aurae-cri still serves.
func TestRecoverServesWhenAControllerFails(t *testing.T) {
	f := newFixture(t, true)
	pod, err := f.rt.RunPodSandbox(t.Context(), &runtimeapi.RunPodSandboxRequest{Config: podConfig("kept")})
	if err != nil {
		t.Fatal(err)
	}
	f.ctrl.mu.Lock()
	f.ctrl.listErr = errFake
	f.ctrl.mu.Unlock()
	rt := f.runtime(t)
	if err := rt.Recover(t.Context()); err != nil {
		t.Fatalf("recover with a failing controller: %v", err)
	}
	st, err := rt.PodSandboxStatus(t.Context(), &runtimeapi.PodSandboxStatusRequest{PodSandboxId: pod.GetPodSandboxId()})
	if err != nil || st.GetStatus().GetState() != runtimeapi.PodSandboxState_SANDBOX_READY {
		t.Fatalf("pod after a failed listing: %v %v", st.GetStatus(), err)
	}
}

// TestExitSeenBesideAWedgedPod: the exit of one container is recorded
// while another's controller does not answer, through events and through
// the poll alike.
func TestExitSeenBesideAWedgedPod(t *testing.T) {
	f := newFixture(t, true)
	f.startContainers(t, 3)
	f.ctrl.wedge("c0")
	defer f.ctrl.unwedge("c0")
	f.ctrl.dropEvents() // a resync starts, and blocks on c0
	time.Sleep(50 * time.Millisecond)
	f.ctrl.exit("c1", 1, "")
	f.ctrl.mu.Lock()
	f.ctrl.quiet = true
	f.ctrl.mu.Unlock()
	f.ctrl.exit("c2", 2, "") // no event: only the poll sees it
	deadline := time.Now().Add(2 * time.Second)
	for _, id := range []string{"c1", "c2"} {
		for {
			st, err := f.rt.ContainerStatus(t.Context(), &runtimeapi.ContainerStatusRequest{ContainerId: id})
			if err != nil {
				t.Fatal(err)
			}
			if st.GetStatus().GetState() == runtimeapi.ContainerState_CONTAINER_EXITED {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the exit of %s is not seen while c0 is wedged", id)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
}

// TestPollNotHeldByAWedgedPod: a poll round does not wait for a status
// call that does not return (c0's, which the fake holds whatever its
// deadline): later rounds skip c0, whose call is still in flight, and see
// the exit of c1, which no event reports; c0 is never asked twice at once.
func TestPollNotHeldByAWedgedPod(t *testing.T) {
	f := newFixture(t, false)
	f.ctrl.mu.Lock()
	f.ctrl.eventsErr = errFake // no events, no resync: only the poll asks
	f.ctrl.mu.Unlock()
	if err := f.rt.Recover(t.Context()); err != nil {
		t.Fatal(err)
	}
	defer f.rt.Close()
	f.startContainers(t, 3)
	held, release := f.ctrl.hold("c0")
	defer release()
	<-held.entered // a poll round has asked c0, and waits on it
	f.ctrl.exit("c1", 3, "")
	deadline := time.Now().Add(30 * time.Second) // not a latency bound: the old poll never got here
	for {
		st, err := f.rt.ContainerStatus(t.Context(), &runtimeapi.ContainerStatusRequest{ContainerId: "c1"})
		if err != nil {
			t.Fatal(err)
		}
		if st.GetStatus().GetState() == runtimeapi.ContainerState_CONTAINER_EXITED {
			if st.GetStatus().GetExitCode() != 3 {
				t.Fatalf("c1 exited with %d, want 3", st.GetStatus().GetExitCode())
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the exit of c1 is not seen while a poll round waits on c0")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if calls, pending, most := f.ctrl.holding(held); calls != 1 || pending != 1 || most != 1 {
		t.Fatalf("c0: %d status calls, %d pending, at most %d at once; want the one call in flight", calls, pending, most)
	}
	release()
	// Once c0 answers, the poll asks it again, one call at a time.
	f.ctrl.exit("c0", 5, "")
	for {
		st, err := f.rt.ContainerStatus(t.Context(), &runtimeapi.ContainerStatusRequest{ContainerId: "c0"})
		if err != nil {
			t.Fatal(err)
		}
		if st.GetStatus().GetState() == runtimeapi.ContainerState_CONTAINER_EXITED {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the exit of c0 is not seen once its call returned")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
