package netcni

import (
	"context"
	"fmt"
	"net"
	"strings"
	"time"

	gocni "github.com/containerd/go-cni"
)

// PortMapping forwards HostIP:HostPort on the node to ContainerPort in the
// pod (the portmap plugin's "portMappings" capability). Mappings with a zero
// HostPort are ignored, as containerd does.
type PortMapping struct {
	Protocol      string // "tcp" (default), "udp" or "sctp"; any case
	ContainerPort int32
	HostPort      int32
	HostIP        string // "" for every address of the node
}

// DNS is passed to plugins that support the "dns" capability.
type DNS struct {
	Servers  []string
	Searches []string
	Options  []string
}

// SetupOptions describe a pod's network. Teardown needs the same options as
// Setup: portmap removes a pod's forwarding rules only when it is told the
// pod's port mappings again.
type SetupOptions struct {
	PortMappings []PortMapping
	// Labels become CNI_ARGS (K8S_POD_NAME, K8S_POD_NAMESPACE, ...); plugins
	// ignore the ones they do not know.
	Labels map[string]string
	DNS    *DNS
}

// Result is the pod's address on the default network.
type Result struct {
	// IPs of the pod's interface, IPv4 first when there is one.
	IPs []net.IP
	// Interface is the pod-side interface name (eth0).
	Interface string
}

// rollbackTimeout bounds the teardown of a half set-up pod.
const rollbackTimeout = 30 * time.Second

// Setup attaches the network namespace at netnsPath to the loopback and
// default networks and returns the pod's addresses. On failure what was set
// up is torn down again.
func (m *Manager) Setup(ctx context.Context, podID, netnsPath string, opts SetupOptions) (*Result, error) {
	if podID == "" || netnsPath == "" {
		return nil, fmt.Errorf("cni setup: pod id and netns path are required")
	}
	if err := checkArgs(opts.Labels); err != nil {
		return nil, fmt.Errorf("cni setup pod %q: %w", podID, err)
	}
	nets, err := m.ready()
	if err != nil {
		return nil, fmt.Errorf("cni setup pod %q: %w", podID, err)
	}
	c := nets.forOpts(opts)
	log := m.logger(ctx, podID)
	_, ifName := defaultNetwork(c)
	start := time.Now()
	// What the loopback plugin would do, without its process.
	if err := m.loopback(netnsPath); err != nil {
		return nil, fmt.Errorf("cni setup pod %q: %w", podID, err)
	}
	res, err := c.Setup(ctx, podID, netnsPath, namespaceOpts(opts)...)
	if err != nil {
		// Release the IP and rules of whichever plugin succeeded, under a
		// fresh context: ctx may be the one that expired.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rollbackTimeout)
		defer cancel()
		if derr := m.teardown(rctx, c, podID, netnsPath, opts); derr != nil {
			log.Warn("cni setup rollback failed", "error", derr)
		}
		return nil, fmt.Errorf("cni setup pod %q: %w", podID, err)
	}
	out := &Result{Interface: ifName}
	if cfg, ok := res.Interfaces[ifName]; ok {
		for _, ipc := range cfg.IPConfigs {
			if ipc.IP.To4() != nil {
				out.IPs = append([]net.IP{ipc.IP}, out.IPs...)
			} else {
				out.IPs = append(out.IPs, ipc.IP)
			}
		}
	}
	if len(out.IPs) == 0 {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rollbackTimeout)
		defer cancel()
		if derr := m.teardown(rctx, c, podID, netnsPath, opts); derr != nil {
			log.Warn("cni setup rollback failed", "error", derr)
		}
		return nil, fmt.Errorf("cni setup pod %q: no IP on interface %s", podID, ifName)
	}
	log.Info("pod network set up", "netns", netnsPath, "interface", ifName, "ips", out.IPs,
		"duration", time.Since(start))
	return out, nil
}

// Teardown detaches the pod from its networks: it removes the pod's veth,
// releases its IPs and removes its portmap and masquerade rules. It is
// idempotent: it succeeds when the network namespace is already gone (the
// IPs and rules are still released) and when called again. Pass the options
// Setup got. It fails, wrapping ErrNoConfig or ErrPluginMissing, while no
// config or plugin is there to run DEL: the caller keeps the pod's network
// marked as set up and retries, as containerd does.
func (m *Manager) Teardown(ctx context.Context, podID, netnsPath string, opts SetupOptions) error {
	if podID == "" {
		return fmt.Errorf("cni teardown: pod id is required")
	}
	if err := checkArgs(opts.Labels); err != nil {
		return fmt.Errorf("cni teardown pod %q: %w", podID, err)
	}
	nets, err := m.ready()
	if err != nil {
		return fmt.Errorf("cni teardown pod %q: %w", podID, err)
	}
	c := nets.forOpts(opts)
	if err := m.teardown(ctx, c, podID, netnsPath, opts); err != nil {
		return fmt.Errorf("cni teardown pod %q: %w", podID, err)
	}
	m.logger(ctx, podID).Info("pod network torn down", "netns", netnsPath)
	return nil
}

func (m *Manager) teardown(ctx context.Context, c gocni.CNI, podID, netnsPath string, opts SetupOptions) error {
	if netnsPath != "" && !isNetNS(netnsPath) {
		// The namespace is gone (and its veth with it). Plugins then only
		// release IPs and port mappings; the bridge plugin cannot learn the
		// pod's IPs to remove its masquerade rules, so do that here from
		// libcni's cache of the ADD result, before DEL drops the cache.
		if err := m.teardownMasq(c, podID); err != nil {
			m.logger(ctx, podID).Warn("remove masquerade rules", "error", err)
		}
		netnsPath = ""
	}
	return c.Remove(ctx, podID, netnsPath, namespaceOpts(opts)...)
}

// checkArgs refuses CNI_ARGS that would not survive their encoding:
// CNI_ARGS is "K1=V1;K2=V2", so a ';' or '=' in a value (a pod named
// "x;IP=10.88.0.77") would add an argument of the workload's choosing.
// Control characters and empty keys are refused too.
func checkArgs(args map[string]string) error {
	for k, v := range args {
		if k == "" || strings.ContainsAny(k, ";=") || hasControl(k) {
			return fmt.Errorf("CNI argument name %q: %w", k, ErrInvalidArgs)
		}
		if strings.ContainsAny(v, ";=") || hasControl(v) {
			return fmt.Errorf("CNI argument %s=%q has ';', '=' or a control character: %w", k, v, ErrInvalidArgs)
		}
	}
	return nil
}

func hasControl(s string) bool {
	return strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f })
}

func namespaceOpts(opts SetupOptions) []gocni.NamespaceOpts {
	var nsOpts []gocni.NamespaceOpts
	var pm []gocni.PortMapping
	for _, p := range opts.PortMappings {
		if p.HostPort <= 0 {
			continue
		}
		proto := strings.ToLower(p.Protocol)
		if proto == "" {
			proto = "tcp"
		}
		pm = append(pm, gocni.PortMapping{
			HostPort:      p.HostPort,
			ContainerPort: p.ContainerPort,
			Protocol:      proto,
			HostIP:        p.HostIP,
		})
	}
	if len(pm) > 0 {
		nsOpts = append(nsOpts, gocni.WithCapabilityPortMap(pm))
	}
	if len(opts.Labels) > 0 {
		// Plugins refuse CNI_ARGS they do not know unless told to ignore them.
		nsOpts = append(nsOpts, gocni.WithLabels(opts.Labels), gocni.WithArgs("IgnoreUnknown", "1"))
	}
	if opts.DNS != nil {
		nsOpts = append(nsOpts, gocni.WithCapabilityDNS(gocni.DNS{
			Servers:  opts.DNS.Servers,
			Searches: opts.DNS.Searches,
			Options:  opts.DNS.Options,
		}))
	}
	return nsOpts
}
