package cri

import (
	"cmp"
	"context"
	"slices"
	"time"

	"golang.org/x/sys/unix"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/pkg/controller"
	"github.com/aurae-runtime/aurae-cri/pkg/sandbox"
)

// metricLabels are the label keys of every metric, in the order of their
// values (cadvisor's: the kubelet's /metrics/cadvisor keeps them).
var metricLabels = []string{"container", "id", "image", "name", "namespace", "pod"}

// metricDef is a metric ListMetricDescriptors describes; extra are its
// label keys after metricLabels.
type metricDef struct {
	name, help string
	typ        runtimeapi.MetricType
	extra      []string
}

const (
	counter = runtimeapi.MetricType_COUNTER
	gauge   = runtimeapi.MetricType_GAUGE
)

// metricDefs are the cAdvisor-compatible metrics served, by cadvisor's
// names (those critest and the kubelet's CRI stats provider expect). The
// CRI carries integers: seconds are whole seconds.
var metricDefs = []metricDef{
	{"container_cpu_usage_seconds_total", "Cumulative cpu time consumed in seconds.", counter, nil},
	{"container_cpu_user_seconds_total", "Cumulative user cpu time consumed in seconds.", counter, nil},
	{"container_cpu_system_seconds_total", "Cumulative system cpu time consumed in seconds.", counter, nil},
	{"container_cpu_cfs_periods_total", "Number of elapsed enforcement period intervals.", counter, nil},
	{"container_cpu_cfs_throttled_periods_total", "Number of throttled period intervals.", counter, nil},
	{"container_cpu_cfs_throttled_seconds_total", "Total time duration the container has been throttled.", counter, nil},
	{"container_memory_usage_bytes", "Current memory usage in bytes, including all memory regardless of when it was accessed.", gauge, nil},
	{"container_memory_working_set_bytes", "Current working set in bytes.", gauge, nil},
	{"container_memory_max_usage_bytes", "Maximum memory usage recorded in bytes.", gauge, nil},
	{"container_memory_cache", "Number of bytes of page cache memory.", gauge, nil},
	{"container_memory_rss", "Size of RSS in bytes.", gauge, nil},
	{"container_memory_swap", "Container swap usage in bytes.", gauge, nil},
	{"container_memory_mapped_file", "Size of memory mapped files in bytes.", gauge, nil},
	{"container_memory_kernel_usage", "Size of kernel memory allocated in bytes.", gauge, nil},
	{"container_memory_failcnt", "Number of memory usage hits limits.", counter, nil},
	{"container_memory_failures_total", "Cumulative count of memory allocation failures.", counter, []string{"failure_type", "scope"}},
	{"container_oom_events_total", "Count of out of memory events observed for the container.", counter, nil},
	{"container_processes", "Number of processes running inside the container.", gauge, nil},
	{"container_threads", "Number of threads running inside the container.", gauge, nil},
	{"container_threads_max", "Maximum number of threads allowed inside the container, infinity if value is zero.", gauge, nil},
	{"container_file_descriptors", "Number of open file descriptors for the container.", gauge, nil},
	{"container_sockets", "Number of open sockets for the container.", gauge, nil},
	{"container_fs_usage_bytes", "Number of bytes that are consumed by the container on this filesystem.", gauge, nil},
	{"container_fs_limit_bytes", "Number of bytes that can be consumed by the container on this filesystem.", gauge, nil},
	{"container_fs_inodes_free", "Number of available Inodes.", gauge, nil},
	{"container_fs_inodes_total", "Number of Inodes.", gauge, nil},
	// Described for cadvisor compatibility; no values yet (the pods'
	// cgroups have no blkio accounting: see design.md).
	{"container_blkio_device_usage_total", "Blkio device bytes usage.", counter, []string{"device", "major", "minor", "operation"}},
	{"container_fs_reads_bytes_total", "Cumulative count of bytes read.", counter, nil},
	{"container_fs_reads_total", "Cumulative count of reads completed.", counter, nil},
	{"container_fs_writes_bytes_total", "Cumulative count of bytes written.", counter, nil},
	{"container_fs_writes_total", "Cumulative count of writes completed.", counter, nil},
	{"container_spec_cpu_period", "CPU period of the container.", gauge, nil},
	{"container_spec_cpu_shares", "CPU share of the container.", gauge, nil},
	{"container_spec_memory_limit_bytes", "Memory limit for the container.", gauge, nil},
	{"container_spec_memory_swap_limit_bytes", "Memory swap limit for the container.", gauge, nil},
	{"container_start_time_seconds", "Start time of the container since unix epoch in seconds.", gauge, nil},
	{"container_last_seen", "Last time a container was seen by the exporter.", gauge, nil},
	{"container_network_receive_bytes_total", "Cumulative count of bytes received.", counter, []string{"interface"}},
	{"container_network_receive_packets_total", "Cumulative count of packets received.", counter, []string{"interface"}},
	{"container_network_receive_errors_total", "Cumulative count of errors encountered while receiving.", counter, []string{"interface"}},
	{"container_network_receive_packets_dropped_total", "Cumulative count of packets dropped while receiving.", counter, []string{"interface"}},
	{"container_network_transmit_bytes_total", "Cumulative count of bytes transmitted.", counter, []string{"interface"}},
	{"container_network_transmit_packets_total", "Cumulative count of packets transmitted.", counter, []string{"interface"}},
	{"container_network_transmit_errors_total", "Cumulative count of errors encountered while transmitting.", counter, []string{"interface"}},
	{"container_network_transmit_packets_dropped_total", "Cumulative count of packets dropped while transmitting.", counter, []string{"interface"}},
}

var metricTypes = func() map[string]runtimeapi.MetricType {
	m := map[string]runtimeapi.MetricType{}
	for _, d := range metricDefs {
		m[d.name] = d.typ
	}
	return m
}()

// ListMetricDescriptors implements RuntimeService.ListMetricDescriptors:
// the same list for the life of the process.
func (r *Runtime) ListMetricDescriptors(context.Context, *runtimeapi.ListMetricDescriptorsRequest) (*runtimeapi.ListMetricDescriptorsResponse, error) {
	if err := r.checkReady(); err != nil {
		return nil, err
	}
	resp := &runtimeapi.ListMetricDescriptorsResponse{}
	for _, d := range metricDefs {
		resp.Descriptors = append(resp.Descriptors, &runtimeapi.MetricDescriptor{
			Name: d.name, Help: d.help, LabelKeys: slices.Concat(metricLabels, d.extra),
		})
	}
	return resp, nil
}

// ListPodSandboxMetrics implements RuntimeService.ListPodSandboxMetrics
// for every pod (the request has no filter).
func (r *Runtime) ListPodSandboxMetrics(ctx context.Context, _ *runtimeapi.ListPodSandboxMetricsRequest) (*runtimeapi.ListPodSandboxMetricsResponse, error) {
	if err := r.checkReady(); err != nil {
		return nil, err
	}
	return &runtimeapi.ListPodSandboxMetricsResponse{PodMetrics: r.listPodSandboxMetrics(ctx)}, nil
}

// listPodSandboxMetrics are every pod's metrics, from the figures of the
// stats fan-out (collectStats: a wedged pod answers its last known ones)
// and what the store knows (start time, resources); its network's are the
// interfaces its running containers see (none for a pod on the node's
// network, as cadvisor).
func (r *Runtime) listPodSandboxMetrics(ctx context.Context) []*runtimeapi.PodSandboxMetrics {
	sbs := r.store.Sandboxes()
	byPod, wanted := r.runningByPod(sbs)
	r.pruneStats()
	figures := r.collectStats(ctx, wanted)
	now := time.Now()
	uppers := upperDirs()
	out := make([]*runtimeapi.PodSandboxMetrics, 0, len(sbs))
	for _, sb := range sbs {
		pm := &runtimeapi.PodSandboxMetrics{PodSandboxId: sb.ID}
		md := sb.Config.GetMetadata()
		for _, c := range byPod[sb.ID] {
			cm := &runtimeapi.ContainerMetrics{ContainerId: c.ID}
			labels := []string{c.Config.GetMetadata().GetName(), c.ID, c.ImageName, c.Name, md.GetNamespace(), md.GetName()}
			s, ok := figures[c.ID]
			cm.Metrics = r.containerMetrics(c, labels, s, ok, now, uppers)
			pm.ContainerMetrics = append(pm.ContainerMetrics, cm)
		}
		if net, ok := podNetwork(sb, byPod[sb.ID], figures); ok {
			labels := []string{"", sb.ID, "", sb.Name, md.GetNamespace(), md.GetName()}
			pm.Metrics = networkMetrics(labels, net)
		}
		out = append(out, pm)
	}
	return out
}

// containerMetrics are a running container's metrics: from its figures s
// when it has some (ok), and from the store and its rootfs in any case.
func (r *Runtime) containerMetrics(c sandbox.Container, labels []string, s controller.Stats, ok bool, now time.Time, uppers map[string]string) []*runtimeapi.Metric {
	var out []*runtimeapi.Metric
	add := func(ts int64, name string, v uint64, extra ...string) {
		out = append(out, &runtimeapi.Metric{
			Name: name, Timestamp: ts, MetricType: metricTypes[name],
			LabelValues: slices.Concat(labels, extra), Value: &runtimeapi.UInt64Value{Value: v},
		})
	}
	if ok {
		ts := s.Timestamp.UnixNano()
		sec := uint64(time.Second)
		add(ts, "container_cpu_usage_seconds_total", s.CPUUsageNanos/sec)
		add(ts, "container_cpu_user_seconds_total", s.CPUUserNanos/sec)
		add(ts, "container_cpu_system_seconds_total", s.CPUSystemNanos/sec)
		add(ts, "container_cpu_cfs_periods_total", s.CPUPeriods)
		add(ts, "container_cpu_cfs_throttled_periods_total", s.CPUThrottledPeriods)
		add(ts, "container_cpu_cfs_throttled_seconds_total", s.CPUThrottledNanos/sec)
		add(ts, "container_memory_usage_bytes", s.MemoryUsageBytes)
		add(ts, "container_memory_working_set_bytes", s.MemoryWorkingSetBytes)
		add(ts, "container_memory_max_usage_bytes", s.MemoryMaxUsageBytes)
		add(ts, "container_memory_cache", s.MemoryCacheBytes)
		add(ts, "container_memory_rss", s.MemoryRSSBytes)
		add(ts, "container_memory_swap", s.MemorySwapBytes)
		add(ts, "container_memory_mapped_file", s.MemoryMappedFileBytes)
		add(ts, "container_memory_kernel_usage", s.MemoryKernelBytes)
		add(ts, "container_memory_failcnt", s.MemoryFailcnt)
		// The cgroup's counters cover its descendants: both scopes are the
		// same figure, as cadvisor reports a leaf cgroup.
		for _, scope := range []string{"container", "hierarchy"} {
			add(ts, "container_memory_failures_total", s.MemoryPgfault, "pgfault", scope)
			add(ts, "container_memory_failures_total", s.MemoryPgmajfault, "pgmajfault", scope)
		}
		add(ts, "container_oom_events_total", s.OOMEvents)
		add(ts, "container_processes", s.Processes)
		add(ts, "container_threads", s.Threads)
		add(ts, "container_threads_max", s.ThreadsMax)
		add(ts, "container_file_descriptors", s.FileDescriptors)
		add(ts, "container_sockets", s.Sockets)
		add(ts, "container_last_seen", uint64(s.Timestamp.Unix()))
	}
	rootfs := r.rootfsDir(c.ID)
	add(0, "container_fs_usage_bytes", dirUsage(uppers[rootfs]))
	var fs unix.Statfs_t
	// The rootfs's filesystem (an overlay reports its upper layer's); a
	// rootfs not mounted (yet, or any more) counts the state dir's.
	if unix.Statfs(rootfs, &fs) == nil || unix.Statfs(r.cfg.RootDir, &fs) == nil {
		add(0, "container_fs_limit_bytes", fs.Blocks*uint64(fs.Bsize))
		add(0, "container_fs_inodes_free", fs.Ffree)
		add(0, "container_fs_inodes_total", fs.Files)
	}
	res := c.Config.GetLinux().GetResources()
	add(0, "container_spec_cpu_period", uint64(cmp.Or(res.GetCpuPeriod(), 100000)))
	add(0, "container_spec_cpu_shares", uint64(cmp.Or(res.GetCpuShares(), 1024)))
	add(0, "container_spec_memory_limit_bytes", uint64(max(0, res.GetMemoryLimitInBytes())))
	add(0, "container_spec_memory_swap_limit_bytes", uint64(max(0, res.GetMemorySwapLimitInBytes())))
	if !c.Status.StartedAt.IsZero() {
		add(0, "container_start_time_seconds", uint64(c.Status.StartedAt.Unix()))
	}
	if !ok {
		add(0, "container_last_seen", uint64(now.Unix()))
	}
	return out
}

// networkMetrics are a pod's network counters, an interface each.
func networkMetrics(labels []string, s controller.Stats) []*runtimeapi.Metric {
	var out []*runtimeapi.Metric
	ts := s.Timestamp.UnixNano()
	for _, i := range s.Interfaces {
		for name, v := range map[string]uint64{
			"container_network_receive_bytes_total":            i.RxBytes,
			"container_network_receive_packets_total":          i.RxPackets,
			"container_network_receive_errors_total":           i.RxErrors,
			"container_network_receive_packets_dropped_total":  i.RxDropped,
			"container_network_transmit_bytes_total":           i.TxBytes,
			"container_network_transmit_packets_total":         i.TxPackets,
			"container_network_transmit_errors_total":          i.TxErrors,
			"container_network_transmit_packets_dropped_total": i.TxDropped,
		} {
			out = append(out, &runtimeapi.Metric{
				Name: name, Timestamp: ts, MetricType: counter,
				LabelValues: slices.Concat(labels, []string{i.Name}), Value: &runtimeapi.UInt64Value{Value: v},
			})
		}
	}
	slices.SortStableFunc(out, func(a, b *runtimeapi.Metric) int { return cmp.Compare(a.Name, b.Name) })
	return out
}
