package guest

import (
	"context"
	"fmt"
	"net"
	"time"

	"github.com/containerd/errdefs"
	"github.com/vishvananda/netlink"

	guestv0 "github.com/aurae-runtime/aurae-cri/api/guest/v0"
)

// netRequest is a checked ConfigureNetwork request.
type netRequest struct {
	iface   string
	mac     net.HardwareAddr
	mtu     int
	addr    *netlink.Addr
	gateway net.IP
}

func parseNetRequest(req *guestv0.GuestServiceConfigureNetworkRequest) (netRequest, error) {
	var r netRequest
	r.iface = req.GetInterface()
	if r.iface == "" || len(r.iface) > 15 || !validTag(r.iface) {
		return r, fmt.Errorf("interface %q: want a name of 1 to 15 letters, digits, '-', '_' or '.': %w", r.iface, errdefs.ErrInvalidArgument)
	}
	if m := req.GetMacAddress(); m != "" {
		hw, err := net.ParseMAC(m)
		if err != nil || len(hw) != 6 {
			return r, fmt.Errorf("mac_address %q: %w", m, errdefs.ErrInvalidArgument)
		}
		r.mac = hw
	}
	if mtu := req.GetMtu(); mtu != 0 {
		if mtu < 68 || mtu > 65535 {
			return r, fmt.Errorf("mtu %d: want 68 to 65535: %w", mtu, errdefs.ErrInvalidArgument)
		}
		r.mtu = int(mtu)
	}
	ip, ipnet, err := net.ParseCIDR(req.GetIpv4Cidr())
	if err != nil || ip.To4() == nil {
		return r, fmt.Errorf("ipv4_cidr %q: want an IPv4 address in CIDR notation: %w", req.GetIpv4Cidr(), errdefs.ErrInvalidArgument)
	}
	ipnet.IP = ip
	r.addr = &netlink.Addr{IPNet: ipnet}
	if g := req.GetIpv4Gateway(); g != "" {
		r.gateway = net.ParseIP(g).To4()
		if r.gateway == nil {
			return r, fmt.Errorf("ipv4_gateway %q: %w", g, errdefs.ErrInvalidArgument)
		}
	}
	return r, nil
}

// ConfigureNetwork implements guestv0.GuestServiceServer, with netlink
// (no shell, no ip binary): what a script of `ip` commands in a guest cell
// did, without the starts of the cell init, sh and ip under TCG.
func (s *ConfigureService) ConfigureNetwork(ctx context.Context, req *guestv0.GuestServiceConfigureNetworkRequest) (*guestv0.GuestServiceConfigureNetworkResponse, error) {
	r, err := parseNetRequest(req)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	t0 := time.Now()
	link, err := netlink.LinkByName(r.iface)
	if err != nil {
		return nil, fmt.Errorf("interface %s: %w: %w", r.iface, err, errdefs.ErrNotFound)
	}
	if r.mac != nil {
		if err := netlink.LinkSetHardwareAddr(link, r.mac); err != nil {
			return nil, fmt.Errorf("set %s's address: %w", r.iface, err)
		}
	}
	if r.mtu != 0 {
		if err := netlink.LinkSetMTU(link, r.mtu); err != nil {
			return nil, fmt.Errorf("set %s's mtu: %w", r.iface, err)
		}
	}
	if err := netlink.AddrReplace(link, r.addr); err != nil {
		return nil, fmt.Errorf("address %s on %s: %w", r.addr.IPNet, r.iface, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return nil, fmt.Errorf("set %s up: %w", r.iface, err)
	}
	if r.gateway != nil {
		route := &netlink.Route{LinkIndex: link.Attrs().Index, Gw: r.gateway}
		if err := netlink.RouteReplace(route); err != nil {
			return nil, fmt.Errorf("default route via %s: %w", r.gateway, err)
		}
	}
	s.log.InfoContext(ctx, "guest network configured", "interface", r.iface, "address", r.addr.IPNet.String(),
		"gateway", req.GetIpv4Gateway(), "took", time.Since(t0).Round(time.Millisecond).String())
	return &guestv0.GuestServiceConfigureNetworkResponse{}, nil
}
