package netcni

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
)

// Defaults of the config WriteDefaultConfig writes.
const (
	DefaultNetworkName = "aurae"
	DefaultBridge      = "aurae0"
	DefaultSubnet      = "10.88.0.0/16"

	// BridgeConfFile and LoopbackConfFile are the files WriteBridgeConfig
	// writes; the bridge conflist sorts first, so it is the default network.
	BridgeConfFile   = "10-aurae-bridge.conflist"
	LoopbackConfFile = "99-loopback.conf"

	cniVersion = "1.0.0"
)

// BridgeConfig describes a bridge + portmap network: pods get a veth on a
// Linux bridge that is their gateway, an address from host-local IPAM, NAT
// to the outside (ipMasq) and host port mappings.
type BridgeConfig struct {
	NetworkName string // default DefaultNetworkName
	Bridge      string // default DefaultBridge
	Subnet      string // CIDR; default DefaultSubnet
	// DataDir is host-local's reservation directory; "" for its default
	// (/var/lib/cni/networks).
	DataDir string
}

// WriteDefaultConfig writes the default bridge + portmap conflist (bridge
// aurae0, host-local IPAM on subnet, or DefaultSubnet when "") and a loopback
// conf into dir, only when dir holds no CNI config yet. It is what `make run`
// and aurae-cri call on an empty /etc/cni/net.d.
func WriteDefaultConfig(dir, subnet string) error {
	_, err := WriteBridgeConfig(dir, BridgeConfig{Subnet: subnet})
	return err
}

// WriteBridgeConfig writes c as BridgeConfFile plus LoopbackConfFile into
// dir, creating dir, when dir holds no CNI config; it reports whether it
// wrote anything.
func WriteBridgeConfig(dir string, c BridgeConfig) (bool, error) {
	if c.NetworkName == "" {
		c.NetworkName = DefaultNetworkName
	}
	if c.Bridge == "" {
		c.Bridge = DefaultBridge
	}
	if c.Subnet == "" {
		c.Subnet = DefaultSubnet
	}
	if _, _, err := net.ParseCIDR(c.Subnet); err != nil {
		return false, fmt.Errorf("write CNI config: subnet: %w", err)
	}
	stamp, err := fingerprint(dir)
	if err != nil {
		return false, fmt.Errorf("write CNI config: %w", err)
	}
	if stamp != "" && stamp != stampMissing {
		return false, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return false, fmt.Errorf("write CNI config: %w", err)
	}
	bridge, err := json.MarshalIndent(bridgeConfList(c), "", "  ")
	if err != nil {
		return false, fmt.Errorf("write CNI config: %w", err)
	}
	loopback, err := json.MarshalIndent(map[string]any{
		"cniVersion": cniVersion,
		"name":       "lo",
		"type":       "loopback",
	}, "", "  ")
	if err != nil {
		return false, fmt.Errorf("write CNI config: %w", err)
	}
	// The default network first: a Manager reloading between the two writes
	// must not take the loopback conf for the default network.
	if err := writeFileAtomic(filepath.Join(dir, BridgeConfFile), append(bridge, '\n')); err != nil {
		return false, err
	}
	if err := writeFileAtomic(filepath.Join(dir, LoopbackConfFile), append(loopback, '\n')); err != nil {
		return false, err
	}
	return true, nil
}

func bridgeConfList(c BridgeConfig) map[string]any {
	ipam := map[string]any{
		"type":   "host-local",
		"ranges": []any{[]any{map[string]any{"subnet": c.Subnet}}},
		"routes": []any{map[string]any{"dst": "0.0.0.0/0"}},
	}
	if c.DataDir != "" {
		ipam["dataDir"] = c.DataDir
	}
	return map[string]any{
		"cniVersion": cniVersion,
		"name":       c.NetworkName,
		"plugins": []any{
			map[string]any{
				"type":        "bridge",
				"bridge":      c.Bridge,
				"isGateway":   true,
				"ipMasq":      true,
				"hairpinMode": true,
				"ipam":        ipam,
			},
			map[string]any{
				"type":         "portmap",
				"capabilities": map[string]any{"portMappings": true},
			},
		},
	}
}

// writeFileAtomic writes data to a temp file in path's directory and renames
// it over path, so that a reader never sees half a config.
func writeFileAtomic(path string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	_, werr := f.Write(data)
	if err := f.Chmod(0o644); werr == nil {
		werr = err
	}
	if err := f.Close(); werr == nil {
		werr = err
	}
	if werr == nil {
		werr = os.Rename(tmp, path)
	}
	if werr != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, werr)
	}
	return nil
}
