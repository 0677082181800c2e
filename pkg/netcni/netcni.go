// Package netcni sets up and tears down pod networks with CNI, through
// github.com/containerd/go-cni and the standard plugins (bridge, host-local,
// loopback, portmap) of github.com/containernetworking/plugins.
//
// A Manager loads the first network config of its conf dir (sorted by file
// name, as containerd and CRI-O do), and reloads it whenever the conf dir's
// files change: every Status, Setup and Teardown compares a fingerprint of
// the directory with the one it loaded. A reload builds new go-cni instances
// and swaps them in, so that Status never waits behind a Setup or Teardown
// in flight on the previous ones.
//
// Two plugin runs containerd's CRI makes per pod are not made (each a Go
// binary's start, and the second two iptables runs of its firewall probe,
// at ADD and again at DEL): the loopback plugin's, as Setup brings the
// pod's lo up itself, and, for a pod without host ports, the portmap
// plugin's, which passes the previous plugin's result through unchanged
// when it is given no port mappings (its own ADD and DEL return at once).
package netcni

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	gocni "github.com/containerd/go-cni"
	cnilibrary "github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
)

// Defaults of the kubelet and containerd.
const (
	DefaultConfDir = "/etc/cni/net.d"
	DefaultBinDir  = "/opt/cni/bin"
	// DefaultNetworkNamespacesDir is where NewNetNS pins namespaces.
	DefaultNetworkNamespacesDir = "/run/aurae/netns"
	// DefaultInterface is the pod's interface on the default network.
	DefaultInterface = "eth0"
)

// configExtensions are the file suffixes libcni reads from a conf dir.
var configExtensions = []string{".conf", ".conflist", ".json"}

// Config configures a Manager.
type Config struct {
	// ConfDir holds the CNI network configs; default DefaultConfDir.
	ConfDir string
	// BinDir holds the plugin binaries; default DefaultBinDir. Several
	// directories may be given separated by ':'.
	BinDir string
	// NetworkNamespacesDir is where NewNetNS pins network namespaces;
	// default DefaultNetworkNamespacesDir.
	NetworkNamespacesDir string
	// Logger; default slog.Default().
	Logger *slog.Logger
}

// Manager attaches pods to the CNI network of its conf dir. It is safe for
// concurrent use.
type Manager struct {
	confDir string
	binDirs []string
	nsDir   string
	log     *slog.Logger
	// loopback brings up lo in a pod's network namespace; loopbackUp but
	// in the tests without network namespaces.
	loopback func(netnsPath string) error

	mu      sync.Mutex // guards the fields below; never held across a plugin call
	cni     networks   // the networks of the last load; zero when none
	stamp   string     // fingerprint of the conf dir when last loaded
	loaded  bool
	loadErr error // why the last load found no usable config
}

// New returns a Manager. It does not fail when the conf dir is empty or
// missing: Status reports that until a config appears.
func New(cfg Config) (*Manager, error) {
	if cfg.ConfDir == "" {
		cfg.ConfDir = DefaultConfDir
	}
	if cfg.BinDir == "" {
		cfg.BinDir = DefaultBinDir
	}
	if cfg.NetworkNamespacesDir == "" {
		cfg.NetworkNamespacesDir = DefaultNetworkNamespacesDir
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	m := &Manager{
		confDir:  cfg.ConfDir,
		binDirs:  filepath.SplitList(cfg.BinDir),
		nsDir:    cfg.NetworkNamespacesDir,
		log:      cfg.Logger.With("component", "netcni"),
		loopback: loopbackUp,
	}
	// Fail early on options go-cni refuses; a missing config is no error.
	if _, err := m.newCNI(); err != nil {
		return nil, fmt.Errorf("cni: %w", err)
	}
	_, _ = m.ready()
	return m, nil
}

func (m *Manager) newCNI() (gocni.CNI, error) {
	return gocni.New(
		gocni.WithPluginConfDir(m.confDir),
		gocni.WithPluginDir(m.binDirs),
		gocni.WithInterfacePrefix("eth"),
		// The default network alone: Setup brings lo up itself.
		gocni.WithMinNetworkCount(1),
	)
}

// networks are the go-cni instances of one load of the conf dir.
type networks struct {
	// all is the default network as configured.
	all gocni.CNI
	// noPorts is the default network without its portmap plugins, for
	// pods without host ports; nil when it has none to leave out.
	noPorts gocni.CNI
}

// forOpts is the instance that sets up (and tears down) a pod of opts.
func (n networks) forOpts(opts SetupOptions) gocni.CNI {
	if n.noPorts != nil && !hasHostPorts(opts) {
		return n.noPorts
	}
	return n.all
}

// hasHostPorts reports whether opts map a host port: the mappings portmap
// is given (namespaceOpts drops those without one).
func hasHostPorts(opts SetupOptions) bool {
	return slices.ContainsFunc(opts.PortMappings, func(p PortMapping) bool { return p.HostPort > 0 })
}

// withoutPortmap returns the default network of c without its portmap
// plugins, or nil when it has none or one comes first in its chain (where
// portmap fails: it must be chained, mappings or not).
//
// The portmap plugin (containernetworking/plugins) returns the previous
// result unchanged at ADD, and does nothing at DEL, when it is given no
// port mappings; it only probes the firewall backend first. The list keeps
// its name and every other plugin's config byte for byte, so libcni's
// cache of a pod's result is the same either way, and a pod set up with
// the whole list before is torn down alike.
func (m *Manager) withoutPortmap(c gocni.CNI) (gocni.CNI, error) {
	nets := c.GetConfig().Networks
	if len(nets) != 1 {
		return nil, nil
	}
	var list map[string]json.RawMessage
	if err := json.Unmarshal([]byte(nets[0].Config.Source), &list); err != nil {
		return nil, fmt.Errorf("network %q: %w", nets[0].Config.Name, err)
	}
	var plugins []json.RawMessage
	if err := json.Unmarshal(list["plugins"], &plugins); err != nil {
		return nil, fmt.Errorf("network %q: plugins: %w", nets[0].Config.Name, err)
	}
	var kept []json.RawMessage
	for i, p := range plugins {
		var t struct {
			Type string `json:"type"`
		}
		if err := json.Unmarshal(p, &t); err != nil {
			return nil, fmt.Errorf("network %q: plugin %d: %w", nets[0].Config.Name, i, err)
		}
		if t.Type != "portmap" {
			kept = append(kept, p)
		} else if i == 0 {
			return nil, nil
		}
	}
	if len(kept) == len(plugins) {
		return nil, nil
	}
	b, err := json.Marshal(kept)
	if err != nil {
		return nil, err
	}
	list["plugins"] = b
	src, err := json.Marshal(list)
	if err != nil {
		return nil, err
	}
	nc, err := m.newCNI()
	if err != nil {
		return nil, err
	}
	if err := nc.Load(gocni.WithConfListBytes(src)); err != nil {
		return nil, fmt.Errorf("network %q without portmap: %w", nets[0].Config.Name, err)
	}
	return nc, nil
}

// ConfDir returns the directory the Manager loads its config from.
func (m *Manager) ConfDir() string { return m.confDir }

// Status returns nil when a network config is loaded and every plugin it
// names is installed; otherwise an error saying why (wrapping ErrNoConfig,
// ErrInvalidConfig or ErrPluginMissing): the CRI's NetworkReady=false reason.
//
// For configs of cniVersion 1.1.0 and later it also asks the plugins (the
// STATUS verb), within StatusTimeout; go-cni's own Status would wait on them
// unbounded.
func (m *Manager) Status() error {
	nets, err := m.ready()
	if err != nil {
		return err
	}
	c := nets.all
	ctx, cancel := context.WithTimeout(context.Background(), StatusTimeout)
	defer cancel()
	lib := cnilibrary.NewCNIConfig(m.binDirs, nil)
	for _, n := range c.GetConfig().Networks {
		list, err := cnilibrary.ConfListFromBytes([]byte(n.Config.Source))
		if err != nil {
			return fmt.Errorf("network %q: %w: %w", n.Config.Name, ErrInvalidConfig, err)
		}
		if err := lib.GetStatusNetworkList(ctx, list); err != nil {
			return fmt.Errorf("network %q: plugin status: %w", n.Config.Name, err)
		}
	}
	return nil
}

// StatusTimeout bounds the plugins' answers to Status.
const StatusTimeout = 10 * time.Second

// ready reloads the config when the conf dir changed, checks the plugins and
// returns the go-cni instances to use.
func (m *Manager) ready() (networks, error) {
	m.mu.Lock()
	err := m.reloadLocked()
	nets := m.cni
	m.mu.Unlock()
	if err != nil {
		return networks{}, err
	}
	if err := m.checkPlugins(nets.all); err != nil {
		return networks{}, err
	}
	return nets, nil
}

// reloadLocked loads the conf dir again if its fingerprint changed since the
// last load, and returns why no config is usable (nil when one is).
func (m *Manager) reloadLocked() error {
	stamp, err := fingerprint(m.confDir)
	if err != nil {
		// Unreadable dir: report it, and try again next time.
		m.loaded = false
		return fmt.Errorf("read CNI conf dir %s: %w: %w", m.confDir, ErrNoConfig, err)
	}
	if m.loaded && stamp == m.stamp {
		return m.loadErr
	}
	m.stamp, m.loaded = stamp, true
	switch stamp {
	case stampMissing:
		m.loadErr = fmt.Errorf("CNI conf dir %s does not exist: %w", m.confDir, ErrNoConfig)
	case "":
		m.loadErr = fmt.Errorf("no network config found in %s: %w", m.confDir, ErrNoConfig)
	default:
		m.loadErr = nil
	}
	// Drop what was loaded before, so that Setup fails as Status does.
	m.cni = networks{}
	if m.loadErr != nil {
		m.log.Warn("cni config unavailable", "conf_dir", m.confDir, "reason", m.loadErr)
		return m.loadErr
	}
	c, err := m.newCNI()
	if err == nil {
		err = c.Load(gocni.WithDefaultConf)
	}
	var noPorts gocni.CNI
	if err == nil {
		noPorts, err = m.withoutPortmap(c)
	}
	if err != nil {
		if errors.Is(err, gocni.ErrCNINotInitialized) {
			m.loadErr = fmt.Errorf("load CNI config from %s: %w: %w", m.confDir, ErrNoConfig, err)
		} else {
			m.loadErr = fmt.Errorf("load CNI config from %s: %w: %w", m.confDir, ErrInvalidConfig, err)
		}
		m.log.Warn("cni config unavailable", "conf_dir", m.confDir, "reason", m.loadErr)
		return m.loadErr
	}
	m.cni = networks{all: c, noPorts: noPorts}
	var names []string
	for _, n := range c.GetConfig().Networks {
		names = append(names, n.Config.Name)
	}
	m.log.Info("cni config loaded", "conf_dir", m.confDir, "networks", names, "portmap_only_with_host_ports", noPorts != nil)
	return nil
}

// checkPlugins reports the first plugin binary (main or IPAM) that the loaded
// networks name and no bin dir holds.
func (m *Manager) checkPlugins(c gocni.CNI) error {
	for _, n := range c.GetConfig().Networks {
		for _, p := range n.Config.Plugins {
			if p.Network == nil {
				continue
			}
			for _, typ := range []string{p.Network.Type, p.Network.IPAM.Type} {
				if typ == "" {
					continue
				}
				if _, err := invoke.FindInPath(typ, m.binDirs); err != nil {
					return fmt.Errorf("network %q: plugin %q not found in %s: %w",
						n.Config.Name, typ, strings.Join(m.binDirs, ":"), ErrPluginMissing)
				}
			}
		}
	}
	return nil
}

// defaultNetwork returns the name and interface of the loaded default
// (non-loopback) network.
func defaultNetwork(c gocni.CNI) (name, ifName string) {
	for _, n := range c.GetConfig().Networks {
		if n.IFName != "lo" {
			return n.Config.Name, n.IFName
		}
	}
	return "", DefaultInterface
}

const stampMissing = "\x00missing"

// fingerprint identifies the config files of dir: their names, inodes, sizes
// and modification times (of the symlink targets). It is "" when the dir has none, stampMissing when
// the dir does not exist.
func fingerprint(dir string) (string, error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return stampMissing, nil
	}
	if err != nil {
		return "", err
	}
	var b strings.Builder
	for _, e := range entries {
		if e.IsDir() || !slices.Contains(configExtensions, filepath.Ext(e.Name())) {
			continue
		}
		// Stat, not Lstat: configs mounted from a ConfigMap are symlinks
		// whose targets change.
		fi, err := os.Stat(filepath.Join(dir, e.Name()))
		if err != nil || fi.IsDir() {
			continue // removed meanwhile, dangling, or a directory
		}
		var ino uint64
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			ino = st.Ino
		}
		fmt.Fprintf(&b, "%s/%d/%d/%d\n", e.Name(), ino, fi.Size(), fi.ModTime().UnixNano())
	}
	return b.String(), nil
}

// logger returns the Manager's logger with the pod attribute.
func (m *Manager) logger(_ context.Context, podID string) *slog.Logger {
	return m.log.With("pod", podID)
}
