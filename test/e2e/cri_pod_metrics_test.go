package e2e

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/test/testimage"
)

// metricOf is the value of a pod's metric name (pod's or containers'),
// with the last label value equal to last when last is not "".
func metricOf(ms []*runtimeapi.PodSandboxMetrics, podID, name, last string) (uint64, bool) {
	for _, pm := range ms {
		if pm.GetPodSandboxId() != podID {
			continue
		}
		all := slices.Clone(pm.GetMetrics())
		for _, cm := range pm.GetContainerMetrics() {
			all = append(all, cm.GetMetrics()...)
		}
		for _, m := range all {
			v := m.GetLabelValues()
			if m.GetName() == name && (last == "" || (len(v) > 0 && v[len(v)-1] == last)) {
				return m.GetValue().GetValue(), true
			}
		}
	}
	return 0, false
}

// TestCRIPodMetrics: through the CRI socket, ListPodSandboxMetrics follows
// a busy container's CPU (container_cpu_usage_seconds_total reaches 1 s)
// and 1 MiB sent from one pod to another (the server pod's eth0 transmit
// and the client pod's receive counters grow by it); the descriptors
// describe every metric given, with as many label keys as values;
// PodSandboxStats has the server's eth0 counters and process count;
// StreamPodSandboxMetrics answers the same pods.
func TestCRIPodMetrics(t *testing.T) {
	c := startCRI(t)
	ctx := t.Context()
	image := c.pushBusybox(t, "e2e/busybox:1", testimage.Options{})

	srvPod := c.podConfig(t, "metrics-server")
	srvID, err := c.Runtime.RunPodSandbox(ctx, srvPod, "")
	if err != nil {
		t.Fatal(err)
	}
	runContainer(t, c, srvID, srvPod, containerConfig("httpd", image, "sh", "-c",
		"mkdir -p /www && dd if=/dev/zero of=/www/big bs=1024 count=1024 2>/dev/null && exec httpd -f -p 8080 -h /www"))
	busy := runContainer(t, c, srvID, srvPod, containerConfig("busy", image, "sh", "-c", "while :; do :; done"))
	cliPod := c.podConfig(t, "metrics-client")
	cliID, err := c.Runtime.RunPodSandbox(ctx, cliPod, "")
	if err != nil {
		t.Fatal(err)
	}
	cli := runContainer(t, c, cliID, cliPod, containerConfig("client", image, "sleep", "3600"))
	st, err := c.Runtime.PodSandboxStatus(ctx, srvID, false)
	if err != nil {
		t.Fatal(err)
	}
	srvIP := st.GetStatus().GetNetwork().GetIp()

	list := func() []*runtimeapi.PodSandboxMetrics {
		t.Helper()
		lctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		ms, err := c.Runtime.ListPodSandboxMetrics(lctx)
		if err != nil {
			t.Fatal(err)
		}
		return ms
	}
	before := list()
	tx0, ok1 := metricOf(before, srvID, "container_network_transmit_bytes_total", "eth0")
	rx0, ok2 := metricOf(before, cliID, "container_network_receive_bytes_total", "eth0")
	if !ok1 || !ok2 {
		t.Fatalf("no eth0 counters: server %v, client %v", ok1, ok2)
	}
	// The server may not listen yet: retry the fetch.
	var fetchErr error
	for range 50 {
		var res *runtimeapi.ExecSyncResponse
		res, fetchErr = execSync(ctx, c, cli, []string{"sh", "-c", fmt.Sprintf("wget -q -O - http://%s:8080/big | wc -c", srvIP)})
		if fetchErr == nil && string(res.GetStdout()) == "1048576\n" {
			break
		}
		if fetchErr == nil {
			fetchErr = fmt.Errorf("fetched %q (%s)", res.GetStdout(), res.GetStderr())
		}
		time.Sleep(200 * time.Millisecond)
	}
	if fetchErr != nil {
		t.Fatalf("fetch 1 MiB from the server pod: %v", fetchErr)
	}
	// Stats are refreshed in the background: look until they move (or the
	// test's deadline).
	for {
		ms := list()
		tx, _ := metricOf(ms, srvID, "container_network_transmit_bytes_total", "eth0")
		rx, _ := metricOf(ms, cliID, "container_network_receive_bytes_total", "eth0")
		cpu, _ := metricOf(ms, srvID, "container_cpu_usage_seconds_total", "")
		var busyCPU uint64
		for _, pm := range ms {
			for _, cm := range pm.GetContainerMetrics() {
				for _, m := range cm.GetMetrics() {
					if cm.GetContainerId() == busy && m.GetName() == "container_cpu_usage_seconds_total" {
						busyCPU = m.GetValue().GetValue()
					}
				}
			}
		}
		if tx-tx0 >= 1<<20 && rx-rx0 >= 1<<20 && busyCPU >= 1 {
			t.Logf("server tx +%d, client rx +%d, busy container %d s of CPU (pod's first: %d)", tx-tx0, rx-rx0, busyCPU, cpu)
			checkDescribed(t, c, ms)
			ps, err := c.Runtime.PodSandboxStats(ctx, srvID)
			if err != nil {
				t.Fatal(err)
			}
			if d := ps.GetLinux().GetNetwork().GetDefaultInterface(); d.GetName() != "eth0" || d.GetTxBytes().GetValue() < tx0+1<<20 {
				t.Fatalf("server pod's stats network %v, want eth0 with 1 MiB more sent than %d", ps.GetLinux().GetNetwork(), tx0)
			}
			if n := ps.GetLinux().GetProcess().GetProcessCount().GetValue(); n < 2 {
				t.Fatalf("server pod's process count %d, want httpd's and the busy loop's", n)
			}
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("metrics did not move: server tx +%d, client rx +%d, busy cpu %d s", tx-tx0, rx-rx0, busyCPU)
		}
		time.Sleep(500 * time.Millisecond)
	}

	raw := rawRuntime(t, c)
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	s, err := raw.StreamPodSandboxMetrics(sctx, &runtimeapi.StreamPodSandboxMetricsRequest{})
	streamed, _ := recvAll(t, "StreamPodSandboxMetrics", s, err, (*runtimeapi.StreamPodSandboxMetricsResponse).GetPodSandboxMetrics)
	var ids []string
	for _, pm := range streamed {
		ids = append(ids, pm.GetPodSandboxId())
	}
	slices.Sort(ids)
	if want := slices.Sorted(slices.Values([]string{srvID, cliID})); !slices.Equal(ids, want) {
		t.Fatalf("StreamPodSandboxMetrics pods %v, want %v", ids, want)
	}
}

// checkDescribed: every metric given is described, with as many label
// keys as it has values.
func checkDescribed(t *testing.T, c *CRI, ms []*runtimeapi.PodSandboxMetrics) {
	t.Helper()
	descs, err := c.Runtime.ListMetricDescriptors(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	keys := map[string]int{}
	for _, d := range descs {
		keys[d.GetName()] = len(d.GetLabelKeys())
	}
	n := 0
	for _, pm := range ms {
		all := slices.Clone(pm.GetMetrics())
		for _, cm := range pm.GetContainerMetrics() {
			all = append(all, cm.GetMetrics()...)
		}
		for _, m := range all {
			n++
			if k, ok := keys[m.GetName()]; !ok || k != len(m.GetLabelValues()) {
				t.Fatalf("%s: %d label values, described with %d keys (described: %v)", m.GetName(), len(m.GetLabelValues()), k, ok)
			}
		}
	}
	t.Logf("%d metrics of %d pods, all described", n, len(ms))
}

func execSync(ctx context.Context, c *CRI, id string, argv []string) (*runtimeapi.ExecSyncResponse, error) {
	stdout, stderr, err := c.Runtime.ExecSync(ctx, id, argv, 20*time.Second)
	if err != nil {
		return nil, err
	}
	return &runtimeapi.ExecSyncResponse{Stdout: stdout, Stderr: stderr}, nil
}
