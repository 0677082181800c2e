package guest

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"

	guestv0 "github.com/aurae-runtime/aurae-cri/api/guest/v0"
)

func validConfigure() *guestv0.GuestServiceConfigureRequest {
	return &guestv0.GuestServiceConfigureRequest{
		UnixTimeNanos: 1_700_000_000_000_000_000,
		Entropy:       make([]byte, 64),
		Hostname:      "pod-0123456789abcdef",
		RescanPci:     true,
		Virtiofs:      []*guestv0.VirtioFSMount{{Tag: "aurae", Path: "/run/aurae/shared"}},
	}
}

func TestValidateConfigure(t *testing.T) {
	if err := validateConfigure(validConfigure()); err != nil {
		t.Fatalf("a valid request: %v", err)
	}
	for name, change := range map[string]func(*guestv0.GuestServiceConfigureRequest){
		"no time":          func(r *guestv0.GuestServiceConfigureRequest) { r.UnixTimeNanos = 0 },
		"little entropy":   func(r *guestv0.GuestServiceConfigureRequest) { r.Entropy = make([]byte, 8) },
		"too much entropy": func(r *guestv0.GuestServiceConfigureRequest) { r.Entropy = make([]byte, 4096) },
		"bad hostname":     func(r *guestv0.GuestServiceConfigureRequest) { r.Hostname = "a/b" },
		"long hostname":    func(r *guestv0.GuestServiceConfigureRequest) { r.Hostname = strings.Repeat("a", 65) },
		"bad tag":          func(r *guestv0.GuestServiceConfigureRequest) { r.Virtiofs[0].Tag = "a b" },
		"relative path":    func(r *guestv0.GuestServiceConfigureRequest) { r.Virtiofs[0].Path = "run/x" },
		"unclean path":     func(r *guestv0.GuestServiceConfigureRequest) { r.Virtiofs[0].Path = "/run/../etc" },
		"root path":        func(r *guestv0.GuestServiceConfigureRequest) { r.Virtiofs[0].Path = "/" },
		"too many shares": func(r *guestv0.GuestServiceConfigureRequest) {
			for range maxShares {
				r.Virtiofs = append(r.Virtiofs, &guestv0.VirtioFSMount{Tag: "t", Path: "/p"})
			}
		},
		"too many nics": func(r *guestv0.GuestServiceConfigureRequest) { r.NetworkInterfaces = maxNICs + 1 },
	} {
		r := validConfigure()
		change(r)
		if err := validateConfigure(r); !errdefs.IsInvalidArgument(err) {
			t.Errorf("%s: %v, want InvalidArgument", name, err)
		}
	}
}

// TestConfigureWaitsForNICsBounded: NICs that never appear fail the call
// (Unavailable) within its bound instead of hanging.
func TestConfigureWaitsForNICsBounded(t *testing.T) {
	sys := t.TempDir()
	if err := os.MkdirAll(filepath.Join(sys, "class", "net", "lo"), 0o755); err != nil {
		t.Fatal(err)
	}
	s := &ConfigureService{log: slog.Default(), sys: sys}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.waitNICs(ctx, 1); !errdefs.IsUnavailable(err) {
		t.Errorf("no NIC: %v, want Unavailable", err)
	}
	if err := os.MkdirAll(filepath.Join(sys, "class", "net", "eth0"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := s.waitNICs(ctx, 1); err != nil {
		t.Errorf("eth0 present: %v", err)
	}
}

func TestParseNetRequest(t *testing.T) {
	ok := &guestv0.GuestServiceConfigureNetworkRequest{Interface: "eth0", MacAddress: "4a:1b:2c:3d:4e:5f", Mtu: 1450, Ipv4Cidr: "10.88.0.5/16", Ipv4Gateway: "10.88.0.1"}
	r, err := parseNetRequest(ok)
	if err != nil || r.addr.IPNet.String() != "10.88.0.5/16" || r.mtu != 1450 || r.gateway.String() != "10.88.0.1" || r.mac.String() != "4a:1b:2c:3d:4e:5f" {
		t.Fatalf("parse %v: %+v %v", ok, r, err)
	}
	for name, req := range map[string]*guestv0.GuestServiceConfigureNetworkRequest{
		"no interface":   {Ipv4Cidr: "10.88.0.5/16"},
		"path interface": {Interface: "../eth0", Ipv4Cidr: "10.88.0.5/16"},
		"bad mac":        {Interface: "eth0", MacAddress: "zz", Ipv4Cidr: "10.88.0.5/16"},
		"tiny mtu":       {Interface: "eth0", Mtu: 10, Ipv4Cidr: "10.88.0.5/16"},
		"no address":     {Interface: "eth0"},
		"ipv6 address":   {Interface: "eth0", Ipv4Cidr: "fd00::5/64"},
		"bad gateway":    {Interface: "eth0", Ipv4Cidr: "10.88.0.5/16", Ipv4Gateway: "gw"},
	} {
		if _, err := parseNetRequest(req); !errdefs.IsInvalidArgument(err) {
			t.Errorf("%s: %v, want InvalidArgument", name, err)
		}
	}
}
