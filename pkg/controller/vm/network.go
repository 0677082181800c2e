package vm

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/errdefs"

	guestv0 "github.com/aurae-runtime/aurae-cri/api/guest/v0"
	"github.com/aurae-runtime/aurae-cri/pkg/controller"
)

// netInfo is what the guest's eth0 takes over from CNI's eth0.
type netInfo struct {
	MAC     string
	CIDR    string // 10.88.0.5/16
	Gateway string // empty when there is no default route
	MTU     string
}

// StartPod bridges the pod's network into its VM: CNI's eth0 and the VM's
// tap0 are mirrored both ways by tc (Kata's tcfilter model), and the
// guest's eth0 takes eth0's MAC, address, MTU and default route.
func (c *Controller) StartPod(ctx context.Context, podID string, net *controller.Network) error {
	if net == nil || net.NetNSPath == "" {
		return fmt.Errorf("vm pod %s: no network namespace to bridge: %w", podID, errdefs.ErrInvalidArgument)
	}
	netnsPath := net.NetNSPath
	unlock := c.lockPod(podID)
	defer unlock()
	p, err := c.pod(podID)
	if err != nil {
		return err
	}
	c.mu.Lock()
	g := p.guest
	c.mu.Unlock()
	if g == nil {
		return fmt.Errorf("vm pod %s: the VM is not running: %w", podID, errdefs.ErrFailedPrecondition)
	}
	ni, err := readNetInfo(ctx, netnsPath, podIface)
	if err != nil {
		return err
	}
	for _, args := range mirrorCommands(podIface, tapName) {
		if err := inNetns(ctx, netnsPath, args...); err != nil {
			return err
		}
	}
	via, err := configureGuestNet(ctx, g, ni)
	if err != nil {
		return fmt.Errorf("configure the guest's network: %w", err)
	}
	c.log.Info("vm pod network attached", "pod", podID, "mac", ni.MAC, "address", ni.CIDR, "gateway", ni.Gateway, "via", via)
	return nil
}

// mirrorCommands bring the tap up and mirror every frame between the two
// devices (tc ingress qdisc + u32 match-all + mirred redirect).
func mirrorCommands(eth, tap string) [][]string {
	var out [][]string
	out = append(out, []string{"ip", "link", "set", "dev", tap, "up"})
	for _, pair := range [][2]string{{eth, tap}, {tap, eth}} {
		out = append(out,
			[]string{"tc", "qdisc", "add", "dev", pair[0], "ingress"},
			[]string{"tc", "filter", "add", "dev", pair[0], "parent", "ffff:", "protocol", "all", "u32", "match", "u8", "0", "0",
				"action", "mirred", "egress", "redirect", "dev", pair[1]},
		)
	}
	return out
}

// configureGuestNet gives the guest's eth0 the pod's MAC, MTU, address and
// default route through GuestService (netlink in the guest auraed); a guest
// image without it gets the same as a script of busybox ip in a cell.
// It returns which did: "guest-service" or "script".
func configureGuestNet(ctx context.Context, g *guest, ni netInfo) (string, error) {
	req := &guestv0.GuestServiceConfigureNetworkRequest{Interface: "eth0", MacAddress: ni.MAC, Ipv4Cidr: ni.CIDR, Ipv4Gateway: ni.Gateway}
	if ni.MTU != "" {
		mtu, err := strconv.ParseUint(ni.MTU, 10, 32)
		if err != nil {
			return "", fmt.Errorf("mtu %q: %w", ni.MTU, err)
		}
		req.Mtu = uint32(mtu)
	}
	_, err := guestv0.NewGuestServiceClient(g.Conn).ConfigureNetwork(ctx, req)
	// The Aurae client maps a guest's Unimplemented to errdefs' kind.
	if errdefs.IsNotImplemented(err) {
		return "script", g.run(ctx, "net", guestNetScript(ni))
	}
	return "guest-service", err
}

// guestNetScript configures the guest's eth0 (busybox ip).
func guestNetScript(ni netInfo) string {
	s := "ip link set dev eth0 address " + ni.MAC
	if ni.MTU != "" {
		s += " && ip link set dev eth0 mtu " + ni.MTU
	}
	s += " && ip addr add " + ni.CIDR + " dev eth0 && ip link set dev eth0 up"
	if ni.Gateway != "" {
		s += " && ip route add default via " + ni.Gateway + " dev eth0"
	}
	return s
}

// inNetns runs a fixed command (no shell) in the network namespace.
func inNetns(ctx context.Context, netnsPath string, args ...string) error {
	_, err := outputIn(ctx, netnsPath, args...)
	return err
}

func outputIn(ctx context.Context, netnsPath string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	argv := append([]string{"--net=" + netnsPath}, args...)
	out, err := exec.CommandContext(ctx, "nsenter", argv...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// readNetInfo reads eth0's MAC, MTU, IPv4 address and the default route.
func readNetInfo(ctx context.Context, netnsPath, dev string) (netInfo, error) {
	var ni netInfo
	link, err := outputIn(ctx, netnsPath, "ip", "-o", "link", "show", "dev", dev)
	if err != nil {
		return ni, err
	}
	addr, err := outputIn(ctx, netnsPath, "ip", "-o", "-4", "addr", "show", "dev", dev)
	if err != nil {
		return ni, err
	}
	route, err := outputIn(ctx, netnsPath, "ip", "-4", "route", "show", "default")
	if err != nil {
		return ni, err
	}
	return parseNetInfo(link, addr, route)
}

// parseNetInfo parses `ip -o link show`, `ip -o -4 addr show` and
// `ip -4 route show default`.
func parseNetInfo(link, addr, route string) (netInfo, error) {
	var ni netInfo
	lf := strings.Fields(link)
	for i := 0; i+1 < len(lf); i++ {
		switch lf[i] {
		case "link/ether":
			ni.MAC = lf[i+1]
		case "mtu":
			ni.MTU = lf[i+1]
		}
	}
	af := strings.Fields(addr)
	for i := 0; i+1 < len(af); i++ {
		if af[i] == "inet" {
			ni.CIDR = af[i+1]
			break
		}
	}
	rf := strings.Fields(route)
	for i := 0; i+1 < len(rf); i++ {
		if rf[i] == "via" {
			ni.Gateway = rf[i+1]
			break
		}
	}
	if _, err := net.ParseMAC(ni.MAC); err != nil {
		return ni, fmt.Errorf("no MAC address in %q", link)
	}
	if _, _, err := net.ParseCIDR(ni.CIDR); err != nil {
		return ni, fmt.Errorf("no IPv4 address in %q", addr)
	}
	if ni.Gateway != "" && net.ParseIP(ni.Gateway) == nil {
		return ni, fmt.Errorf("bad gateway in %q", route)
	}
	return ni, nil
}
