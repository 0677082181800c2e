package osinfo

import (
	"context"
	"fmt"
	"net"
	"strings"

	"github.com/containerd/errdefs"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	osapi "github.com/aurae-runtime/aurae-cri/api/os"
)

// criClient is a connection to the node's CRI runtime, for driver CRI.
type criClient struct {
	conn *grpc.ClientConn
	rt   runtimeapi.RuntimeServiceClient
}

func (s *Service) dialCRI(context.Context) (*criClient, error) {
	sock, ok := strings.CutPrefix(s.cfg.CRIEndpoint, "unix://")
	if !ok || sock == "" {
		return nil, fmt.Errorf("driver CRI: no CRI endpoint is configured (auraed --cri-endpoint unix:///path): %w", errdefs.ErrFailedPrecondition)
	}
	conn, err := grpc.NewClient("passthrough:///localhost",
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}))
	if err != nil {
		return nil, fmt.Errorf("CRI endpoint %s: %w", s.cfg.CRIEndpoint, err)
	}
	return &criClient{conn: conn, rt: runtimeapi.NewRuntimeServiceClient(conn)}, nil
}

func (c *criClient) close() { _ = c.conn.Close() }

// pods maps the CRI runtime's pod sandbox ids to their namespaces.
func (c *criClient) pods(ctx context.Context) (map[string]string, error) {
	resp, err := c.rt.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
	if err != nil {
		return nil, fmt.Errorf("CRI ListPodSandbox: %w", err)
	}
	ns := map[string]string{}
	for _, p := range resp.GetItems() {
		ns[p.GetId()] = p.GetMetadata().GetNamespace()
	}
	return ns, nil
}

func (c *criClient) containers(ctx context.Context, namespace string) ([]*osapi.ContainerInfo, error) {
	ns, err := c.pods(ctx)
	if err != nil {
		return nil, err
	}
	resp, err := c.rt.ListContainers(ctx, &runtimeapi.ListContainersRequest{})
	if err != nil {
		return nil, fmt.Errorf("CRI ListContainers: %w", err)
	}
	var out []*osapi.ContainerInfo
	for _, ctr := range resp.GetContainers() {
		if !matches(namespace, ns[ctr.GetPodSandboxId()]) {
			continue
		}
		out = append(out, &osapi.ContainerInfo{
			Namespace: ns[ctr.GetPodSandboxId()],
			Id:        ctr.GetId(),
			Image:     ctr.GetImage().GetImage(),
			Status:    strings.ToLower(strings.TrimPrefix(ctr.GetState().String(), "CONTAINER_")),
			PodId:     ctr.GetPodSandboxId(),
			Name:      ctr.GetMetadata().GetName(),
		})
	}
	return out, nil
}

// stats are the CRI runtime's container stats, with the namespace and pod
// of each container from its listing.
func (c *criClient) stats(ctx context.Context, namespace string) ([]*osapi.Stat, error) {
	ctrs, err := c.containers(ctx, namespace)
	if err != nil {
		return nil, err
	}
	byID := make(map[string]*osapi.ContainerInfo, len(ctrs))
	for _, ctr := range ctrs {
		byID[ctr.GetId()] = ctr
	}
	resp, err := c.rt.ListContainerStats(ctx, &runtimeapi.ListContainerStatsRequest{})
	if err != nil {
		return nil, fmt.Errorf("CRI ListContainerStats: %w", err)
	}
	var out []*osapi.Stat
	for _, st := range resp.GetStats() {
		ctr, ok := byID[st.GetAttributes().GetId()]
		if !ok {
			continue // another namespace, or made meanwhile
		}
		out = append(out, &osapi.Stat{
			Namespace:   ctr.GetNamespace(),
			Id:          ctr.GetId(),
			MemoryUsage: st.GetMemory().GetWorkingSetBytes().GetValue(),
			CpuUsage:    st.GetCpu().GetUsageCoreNanoSeconds().GetValue(),
			PodId:       ctr.GetPodId(),
			Name:        ctr.GetName(),
		})
	}
	return out, nil
}
