package cri

import (
	"slices"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/pkg/sandbox"
)

// critestMetrics are the metrics critest v1.37.0's metrics specs require
// described and, but for the last five, given values for a pod with a
// running container (its expected list less those it calls unimplemented).
var critestMetrics = []string{
	"container_cpu_cfs_periods_total", "container_cpu_cfs_throttled_periods_total", "container_cpu_cfs_throttled_seconds_total",
	"container_cpu_system_seconds_total", "container_cpu_usage_seconds_total", "container_cpu_user_seconds_total",
	"container_file_descriptors", "container_fs_inodes_free", "container_fs_inodes_total", "container_fs_limit_bytes",
	"container_fs_usage_bytes", "container_last_seen", "container_memory_cache", "container_memory_failcnt",
	"container_memory_failures_total", "container_memory_kernel_usage", "container_memory_mapped_file",
	"container_memory_max_usage_bytes", "container_memory_rss", "container_memory_swap", "container_memory_usage_bytes",
	"container_memory_working_set_bytes", "container_network_receive_bytes_total", "container_network_receive_errors_total",
	"container_network_receive_packets_dropped_total", "container_network_receive_packets_total",
	"container_network_transmit_bytes_total", "container_network_transmit_errors_total",
	"container_network_transmit_packets_dropped_total", "container_network_transmit_packets_total",
	"container_oom_events_total", "container_processes", "container_sockets", "container_spec_cpu_period",
	"container_spec_cpu_shares", "container_spec_memory_limit_bytes", "container_spec_memory_swap_limit_bytes",
	"container_start_time_seconds", "container_threads", "container_threads_max",
	// Described, values optional.
	"container_blkio_device_usage_total", "container_fs_reads_bytes_total", "container_fs_reads_total",
	"container_fs_writes_bytes_total", "container_fs_writes_total",
}

const critestOptional = 5

func descriptors(t *testing.T, f *fixture) map[string]*runtimeapi.MetricDescriptor {
	t.Helper()
	resp, err := f.rt.ListMetricDescriptors(t.Context(), &runtimeapi.ListMetricDescriptorsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*runtimeapi.MetricDescriptor{}
	for _, d := range resp.GetDescriptors() {
		if _, dup := out[d.GetName()]; dup {
			t.Errorf("%s described twice", d.GetName())
		}
		if d.GetHelp() == "" || len(d.GetLabelKeys()) == 0 {
			t.Errorf("%s has no help or no label keys: %v", d.GetName(), d)
		}
		out[d.GetName()] = d
	}
	return out
}

// podMetrics are a pod's metrics by name (pod's and containers'), the first
// of each name.
func podMetrics(t *testing.T, all []*runtimeapi.PodSandboxMetrics, podID string) map[string]*runtimeapi.Metric {
	t.Helper()
	for _, pm := range all {
		if pm.GetPodSandboxId() != podID {
			continue
		}
		out := map[string]*runtimeapi.Metric{}
		ms := slices.Clone(pm.GetMetrics())
		for _, cm := range pm.GetContainerMetrics() {
			ms = append(ms, cm.GetMetrics()...)
		}
		for _, m := range ms {
			if _, ok := out[m.GetName()]; !ok {
				out[m.GetName()] = m
			}
		}
		return out
	}
	t.Fatalf("no metrics for pod %s", podID)
	return nil
}

// TestMetricsAsCritestWants: every metric critest requires is described,
// with help and label keys, and a pod with a running container has a
// value for each (but the optional ones), with as many label values as
// its descriptor has keys; the figures are the controller's.
func TestMetricsAsCritestWants(t *testing.T) {
	f := newFixture(t, true)
	pods := f.bigPods(t, 2, 10)
	descs := descriptors(t, f)
	for _, name := range critestMetrics {
		if descs[name] == nil {
			t.Errorf("%s is not described", name)
		}
	}
	resp, err := f.rt.ListPodSandboxMetrics(t.Context(), &runtimeapi.ListPodSandboxMetricsRequest{})
	if err != nil || len(resp.GetPodMetrics()) != 2 {
		t.Fatalf("ListPodSandboxMetrics: %v %v", resp, err)
	}
	got := podMetrics(t, resp.GetPodMetrics(), pods[1])
	for _, name := range critestMetrics[:len(critestMetrics)-critestOptional] {
		if got[name] == nil {
			t.Errorf("pod %s has no %s", pods[1], name)
		}
	}
	for name, m := range got {
		d := descs[name]
		if d == nil {
			t.Errorf("%s is given but not described", name)
			continue
		}
		if len(m.GetLabelValues()) != len(d.GetLabelKeys()) {
			t.Errorf("%s: label values %v for keys %v", name, m.GetLabelValues(), d.GetLabelKeys())
		}
		if m.GetMetricType() != metricTypes[name] {
			t.Errorf("%s is a %v, described as %v", name, m.GetMetricType(), metricTypes[name])
		}
	}
	if v := got["container_network_receive_bytes_total"].GetLabelValues(); v[len(v)-1] != "eth0" || v[1] != pods[1] {
		t.Errorf("network metric labels %v, want the pod's id and eth0", v)
	}
	if v := got["container_threads"]; v.GetValue().GetValue() != 3 || v.GetLabelValues()[1] != "ctr-1" || v.GetLabelValues()[5] != "pod-1" {
		t.Errorf("container_threads: %v, want 3 for ctr-1 of pod-1", v)
	}
	if v := got["container_start_time_seconds"].GetValue().GetValue(); v == 0 {
		t.Errorf("container_start_time_seconds is 0")
	}
}

// TestMetricsOfAHostNetworkPod: a pod on the node's network has no network
// metrics (they would be the node's), as cadvisor.
func TestMetricsOfAHostNetworkPod(t *testing.T) {
	f := newFixture(t, true)
	cfg := podConfig("hostnet")
	cfg.Linux = &runtimeapi.LinuxPodSandboxConfig{SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
		NamespaceOptions: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE}}}
	pod, err := f.rt.RunPodSandbox(t.Context(), &runtimeapi.RunPodSandboxRequest{Config: cfg})
	if err != nil {
		t.Fatal(err)
	}
	f.startContainersIn(t, pod.GetPodSandboxId(), "h0")
	resp, err := f.rt.ListPodSandboxMetrics(t.Context(), &runtimeapi.ListPodSandboxMetricsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	got := podMetrics(t, resp.GetPodMetrics(), pod.GetPodSandboxId())
	if got["container_cpu_usage_seconds_total"] == nil {
		t.Fatalf("no container metrics: %v", got)
	}
	if m := got["container_network_receive_bytes_total"]; m != nil {
		t.Fatalf("a host-network pod has network metrics: %v", m)
	}
}

// TestMetricsWithAWedgedPod: the metrics answer with a wedged container's
// last known figures, the others' fresh ones; the stream answers the same
// pods.
func TestMetricsWithAWedgedPod(t *testing.T) {
	f := newFixture(t, true)
	pods := f.bigPods(t, 4, 10)
	if _, err := f.rt.ListPodSandboxMetrics(t.Context(), &runtimeapi.ListPodSandboxMetricsRequest{}); err != nil {
		t.Fatal(err)
	}
	f.ctrl.wedge("ctr-2")
	defer f.ctrl.unwedge("ctr-2")
	resp, err := f.rt.ListPodSandboxMetrics(t.Context(), &runtimeapi.ListPodSandboxMetricsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for i, id := range pods {
		rx := podMetrics(t, resp.GetPodMetrics(), id)["container_network_receive_bytes_total"].GetValue().GetValue()
		want := uint64(200) // a second call's
		if i == 2 {
			want = 100 // the wedged one's first call's
		}
		if rx != want {
			t.Errorf("pod %d: rx %d, want %d", i, rx, want)
		}
	}
	s := newStream[runtimeapi.StreamPodSandboxMetricsResponse](t.Context())
	if err := f.rt.StreamPodSandboxMetrics(&runtimeapi.StreamPodSandboxMetricsRequest{}, s); err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, pm := range resp.GetPodMetrics() {
		want = append(want, pm.GetPodSandboxId())
	}
	checkChunks(t, "StreamPodSandboxMetrics", s.sent, (*runtimeapi.StreamPodSandboxMetricsResponse).GetPodSandboxMetrics,
		(*runtimeapi.PodSandboxMetrics).GetPodSandboxId, want)
	if len(s.sent) > 0 && proto.Size(s.sent[0]) == 0 {
		t.Fatal("empty message")
	}
}

// startContainersIn adds and starts running containers ids in pod podID.
func (f *fixture) startContainersIn(t *testing.T, podID string, ids ...string) {
	t.Helper()
	for _, id := range ids {
		c := &sandbox.Container{ID: id, SandboxID: podID, Name: id + "_in", CreatedAt: time.Now(),
			Config: &runtimeapi.ContainerConfig{Metadata: &runtimeapi.ContainerMetadata{Name: id}},
			Status: sandbox.ContainerStatus{State: runtimeapi.ContainerState_CONTAINER_CREATED}}
		if err := f.store.AddContainer(c); err != nil {
			t.Fatal(err)
		}
		if _, err := f.rt.StartContainer(t.Context(), &runtimeapi.StartContainerRequest{ContainerId: id}); err != nil {
			t.Fatal(err)
		}
	}
}

// TestPodStatsNetworkAndProcesses: PodSandboxStats carries the pod's
// interfaces (eth0 the default) and its containers' process count; a pod
// on the node's network has no network stats.
func TestPodStatsNetworkAndProcesses(t *testing.T) {
	f := newFixture(t, true)
	pods := f.bigPods(t, 1, 10)
	f.startContainersIn(t, pods[0], "second")
	st, err := f.rt.PodSandboxStats(t.Context(), &runtimeapi.PodSandboxStatsRequest{PodSandboxId: pods[0]})
	if err != nil {
		t.Fatal(err)
	}
	l := st.GetStats().GetLinux()
	if d := l.GetNetwork().GetDefaultInterface(); d.GetName() != "eth0" || d.GetRxBytes().GetValue() != 100 || d.GetTxBytes().GetValue() != 7 {
		t.Fatalf("pod network %v, want eth0 with the controller's counters", l.GetNetwork())
	}
	if n := l.GetProcess().GetProcessCount().GetValue(); n != 2 {
		t.Fatalf("process count %d, want 2 (a process in each of 2 containers)", n)
	}

	cfg := podConfig("hostnet")
	cfg.Linux = &runtimeapi.LinuxPodSandboxConfig{SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
		NamespaceOptions: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE}}}
	pod, err := f.rt.RunPodSandbox(t.Context(), &runtimeapi.RunPodSandboxRequest{Config: cfg})
	if err != nil {
		t.Fatal(err)
	}
	f.startContainersIn(t, pod.GetPodSandboxId(), "h0")
	st, err = f.rt.PodSandboxStats(t.Context(), &runtimeapi.PodSandboxStatsRequest{PodSandboxId: pod.GetPodSandboxId()})
	if err != nil {
		t.Fatal(err)
	}
	if st.GetStats().GetLinux().GetNetwork() != nil || st.GetStats().GetLinux().GetCpu() == nil {
		t.Fatalf("host-network pod stats %v, want cpu and no network", st.GetStats().GetLinux())
	}
}
