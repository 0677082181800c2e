package vms

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"

	"github.com/containerd/errdefs"

	vmsv0 "github.com/aurae-runtime/aurae-cri/api/vms/v0"
	"github.com/aurae-runtime/aurae-cri/pkg/hypervisor"
)

// netName is what a tap device name or a share's tag may be.
var netName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$`)

// validNetAndShares checks the network namespace, NICs and shared
// directories of a VM spec.
func validNetAndShares(m *vmsv0.VirtualMachine) error {
	if p := m.GetNetworkNamespacePath(); p != "" {
		if !filepath.IsAbs(p) {
			return fmt.Errorf("vm %q: network_namespace_path %q is not absolute: %w", m.GetId(), p, errdefs.ErrInvalidArgument)
		}
		if _, err := os.Stat(p); err != nil {
			return fmt.Errorf("vm %q: network_namespace_path: %w: %w", m.GetId(), err, errdefs.ErrInvalidArgument)
		}
	}
	taps := map[string]bool{}
	for i, n := range m.GetNetworkInterfaces() {
		if !netName.MatchString(n.GetTapName()) || taps[n.GetTapName()] {
			return fmt.Errorf("vm %q: network_interfaces[%d].tap_name %q is not a unique device name of at most 15 bytes: %w", m.GetId(), i, n.GetTapName(), errdefs.ErrInvalidArgument)
		}
		taps[n.GetTapName()] = true
		if mac := n.GetMacAddress(); mac != "" {
			if hw, err := net.ParseMAC(mac); err != nil || len(hw) != 6 {
				return fmt.Errorf("vm %q: network_interfaces[%d].mac_address %q: %w", m.GetId(), i, mac, errdefs.ErrInvalidArgument)
			}
		}
	}
	tags := map[string]bool{}
	for i, sh := range m.GetSharedDirectories() {
		if !netName.MatchString(sh.GetTag()) || tags[sh.GetTag()] {
			return fmt.Errorf("vm %q: shared_directories[%d].tag %q is not a unique tag of at most 15 bytes: %w", m.GetId(), i, sh.GetTag(), errdefs.ErrInvalidArgument)
		}
		tags[sh.GetTag()] = true
		if err := validDir(fmt.Sprintf("shared_directories[%d].host_path", i), sh.GetHostPath()); err != nil {
			return fmt.Errorf("vm %q: %w", m.GetId(), err)
		}
	}
	return nil
}

func validDir(what, p string) error {
	if !filepath.IsAbs(p) {
		return fmt.Errorf("%s %q is not absolute: %w", what, p, errdefs.ErrInvalidArgument)
	}
	fi, err := os.Stat(p)
	if err != nil {
		return fmt.Errorf("%s: %w: %w", what, err, errdefs.ErrInvalidArgument)
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s %s is not a directory: %w", what, p, errdefs.ErrInvalidArgument)
	}
	return nil
}

// netAndShares adds the spec's network namespace, NICs and shares to a
// boot config.
func netAndShares(m *vmsv0.VirtualMachine, cfg *hypervisor.VMConfig) {
	cfg.NetNSPath = m.GetNetworkNamespacePath()
	for _, n := range m.GetNetworkInterfaces() {
		cfg.NICs = append(cfg.NICs, hypervisor.NIC{Tap: n.GetTapName(), MAC: n.GetMacAddress()})
	}
	for _, sh := range m.GetSharedDirectories() {
		cfg.Shares = append(cfg.Shares, hypervisor.Share{Tag: sh.GetTag(), Path: sh.GetHostPath(), ReadOnly: !sh.GetIsWriteable()})
	}
}
