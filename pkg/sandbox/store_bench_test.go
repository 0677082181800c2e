package sandbox

import (
	"fmt"
	"sort"
	"sync"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// BenchmarkReadsDuringCommits measures what List and Status read from the
// store (every container, then one) while another goroutine commits
// container changes one after another (each fsynced), with 110 pods of one
// container: p50 and p99 of a read, and of a commit.
func BenchmarkReadsDuringCommits(b *testing.B) {
	s, err := Open(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = s.Close() }()
	const n = 110
	addPods(b, s, n)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var commits []time.Duration
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			start := time.Now()
			if _, err := s.UpdateContainer(fmt.Sprintf("c%03d", i%n), func(st ContainerStatus) (ContainerStatus, error) {
				st.Pid = i
				return st, nil
			}); err != nil {
				b.Error(err)
				return
			}
			commits = append(commits, time.Since(start))
		}
	})
	var reads []time.Duration
	i := 0
	for b.Loop() {
		start := time.Now()
		if len(s.Containers()) != n || len(s.Sandboxes()) != n {
			b.Fatal("short list")
		}
		if _, err := s.Container(fmt.Sprintf("c%03d", i%n)); err != nil {
			b.Fatal(err)
		}
		reads = append(reads, time.Since(start))
		i++
		// A read every 100 µs or so, as a busy kubelet's.
		time.Sleep(100 * time.Microsecond)
	}
	close(stop)
	wg.Wait()
	pct := func(d []time.Duration, p float64) float64 {
		sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
		return float64(d[int(p*float64(len(d)-1)+0.5)].Microseconds()) / 1000
	}
	b.ReportMetric(pct(reads, 0.50), "read-p50-ms")
	b.ReportMetric(pct(reads, 0.99), "read-p99-ms")
	if len(commits) > 0 {
		b.ReportMetric(pct(commits, 0.50), "commit-p50-ms")
		b.ReportMetric(pct(commits, 0.99), "commit-p99-ms")
	}
}

// BenchmarkList measures what ListContainers and ListPodSandbox take from
// the store with 110 pods of one container: a copy of each, oldest first.
func BenchmarkList(b *testing.B) {
	s, err := OpenWith(b.TempDir(), Options{NoSync: true})
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = s.Close() }()
	addPods(b, s, 110)
	for b.Loop() {
		if len(s.Containers()) != 110 || len(s.Sandboxes()) != 110 {
			b.Fatal("short list")
		}
	}
}

// addPods stores n running pods of one running container each.
func addPods(b *testing.B, s *Store, n int) {
	b.Helper()
	for i := range n {
		sb := &Sandbox{ID: fmt.Sprintf("p%03d", i), Name: fmt.Sprintf("p%03d_ns_uid_0", i), CreatedAt: time.Now(),
			Config: &runtimeapi.PodSandboxConfig{Metadata: &runtimeapi.PodSandboxMetadata{Name: "p", Namespace: "ns", Uid: "uid"}},
			Status: SandboxStatus{State: runtimeapi.PodSandboxState_SANDBOX_READY}}
		c := &Container{ID: fmt.Sprintf("c%03d", i), SandboxID: sb.ID, Name: fmt.Sprintf("c_p%03d_ns_uid_0", i), CreatedAt: time.Now(),
			Config: &runtimeapi.ContainerConfig{Metadata: &runtimeapi.ContainerMetadata{Name: "c"}},
			Status: ContainerStatus{State: runtimeapi.ContainerState_CONTAINER_RUNNING}}
		for _, err := range []error{s.ReserveName(sb.Name, sb.ID), s.AddSandbox(sb), s.ReserveName(c.Name, c.ID), s.AddContainer(c)} {
			if err != nil {
				b.Fatal(err)
			}
		}
	}
}
