package cri

import (
	"context"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/pkg/metrics"
	"github.com/aurae-runtime/aurae-cri/pkg/netcni"
)

// CNI is the Network of pods on the node's CNI config.
type CNI struct {
	Manager *netcni.Manager
	// Metrics counts the failed setups and teardowns; nil counts nothing.
	Metrics *metrics.CRI
}

var _ Network = CNI{}

// Ready reports why pods cannot get a network, if they cannot.
func (n CNI) Ready() error { return n.Manager.Status() }

// Setup attaches the pod's namespace to the default network.
func (n CNI) Setup(ctx context.Context, podID, netnsPath string, pod *runtimeapi.PodSandboxConfig) ([]string, error) {
	res, err := n.Manager.Setup(ctx, podID, netnsPath, cniOptions(podID, pod))
	if err != nil {
		n.Metrics.CNIFailed("setup")
		return nil, err
	}
	ips := make([]string, 0, len(res.IPs))
	for _, ip := range res.IPs {
		ips = append(ips, ip.String())
	}
	return ips, nil
}

// Teardown detaches the pod; it is idempotent.
func (n CNI) Teardown(ctx context.Context, podID, netnsPath string, pod *runtimeapi.PodSandboxConfig) error {
	err := n.Manager.Teardown(ctx, podID, netnsPath, cniOptions(podID, pod))
	if err != nil {
		n.Metrics.CNIFailed("teardown")
	}
	return err
}

// cniOptions passes the pod's identity as the CNI_ARGS the kubelet's
// runtimes set, and its port mappings and DNS as capabilities.
func cniOptions(podID string, pod *runtimeapi.PodSandboxConfig) netcni.SetupOptions {
	m := pod.GetMetadata()
	opts := netcni.SetupOptions{Labels: map[string]string{
		"K8S_POD_NAMESPACE":          m.GetNamespace(),
		"K8S_POD_NAME":               m.GetName(),
		"K8S_POD_INFRA_CONTAINER_ID": podID,
		"K8S_POD_UID":                m.GetUid(),
		"IgnoreUnknown":              "1",
	}}
	for _, pm := range pod.GetPortMappings() {
		proto := "tcp"
		switch pm.GetProtocol() {
		case runtimeapi.Protocol_UDP:
			proto = "udp"
		case runtimeapi.Protocol_SCTP:
			proto = "sctp"
		}
		opts.PortMappings = append(opts.PortMappings, netcni.PortMapping{
			Protocol: proto, ContainerPort: pm.GetContainerPort(), HostPort: pm.GetHostPort(), HostIP: pm.GetHostIp(),
		})
	}
	if dns := pod.GetDnsConfig(); dns != nil {
		opts.DNS = &netcni.DNS{Servers: dns.GetServers(), Searches: dns.GetSearches(), Options: dns.GetOptions()}
	}
	return opts
}
