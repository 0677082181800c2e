package ocispec

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"tags.cncf.io/container-device-interface/pkg/cdi"
	"tags.cncf.io/container-device-interface/pkg/parser"
)

// CDIAnnotationPrefix starts the container annotations that name CDI
// devices: their values are comma-separated fully qualified device names
// ("vendor.com/class=name"), as containerd and CRI-O read them.
const CDIAnnotationPrefix = cdi.AnnotationPrefix

// CDI injects Container Device Interface devices into a spec: device
// nodes, their device cgroup rules, environment, mounts and hooks. Devices
// it cannot resolve are an error that wraps errdefs.ErrInvalidArgument and
// names them.
type CDI interface {
	Inject(s *specs.Spec, devices []string) error
}

// CDIDevices are the CDI devices a container asks for: its cdi_devices,
// then those of its cdi.k8s.io/ annotations (by key), each once. A name
// that is not a fully qualified device name is refused.
func CDIDevices(cfg *runtimeapi.ContainerConfig) ([]string, error) {
	var out []string
	seen := map[string]bool{}
	add := func(name string) error {
		if !parser.IsQualifiedName(name) {
			return invalid("CDI device %q is not a fully qualified device name (vendor.com/class=name)", name)
		}
		if !seen[name] {
			seen[name] = true
			out = append(out, name)
		}
		return nil
	}
	for _, d := range cfg.GetCDIDevices() {
		if err := add(d.GetName()); err != nil {
			return nil, err
		}
	}
	var keys []string
	for k := range cfg.GetAnnotations() {
		if strings.HasPrefix(k, CDIAnnotationPrefix) {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		for _, name := range strings.Split(cfg.GetAnnotations()[k], ",") {
			if err := add(strings.TrimSpace(name)); err != nil {
				return nil, fmt.Errorf("annotation %s: %w", k, err)
			}
		}
	}
	return out, nil
}

// setCDI injects the container's CDI devices, last: CDI edits add to
// what the request made (containerd applies them after its own spec, too).
func setCDI(in Input, s *specs.Spec) error {
	devices, err := CDIDevices(in.Config)
	if err != nil || len(devices) == 0 {
		return err
	}
	if in.CDI == nil {
		return invalid("CDI devices %s: no CDI spec directories are configured", strings.Join(devices, ", "))
	}
	return in.CDI.Inject(s, devices)
}

// CDICache resolves CDI devices from the CDI specs of a set of
// directories, rescanned on each injection (specs may change at any time).
type CDICache struct {
	mu    sync.Mutex
	cache *cdi.Cache
}

// NewCDICache reads the CDI specs of dirs (later directories win over
// earlier ones, as in the CDI cache); missing directories are no error.
func NewCDICache(dirs []string) (*CDICache, error) {
	c, err := cdi.NewCache(cdi.WithSpecDirs(dirs...), cdi.WithAutoRefresh(false))
	if err != nil {
		return nil, fmt.Errorf("CDI cache of %s: %w", strings.Join(dirs, ", "), err)
	}
	return &CDICache{cache: c}, nil
}

// Inject implements CDI. A device that no valid spec defines is refused
// with the errors of the specs that were skipped, which may explain why.
func (c *CDICache) Inject(s *specs.Spec, devices []string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	refreshErr := c.cache.Refresh() // broken spec files; their devices are unknown
	unresolved, err := c.cache.InjectDevices(s, devices...)
	if len(unresolved) > 0 {
		msg := fmt.Sprintf("unknown CDI devices %s", strings.Join(unresolved, ", "))
		if refreshErr != nil {
			msg += fmt.Sprintf(" (CDI spec errors: %v)", refreshErr)
		}
		return invalid("%s", msg)
	}
	if err != nil {
		return invalid("CDI devices %s: %w", strings.Join(devices, ", "), err)
	}
	return nil
}

// SplitCDISpecDirs splits a comma-separated list of CDI spec directories.
func SplitCDISpecDirs(list string) ([]string, error) {
	var dirs []string
	for d := range strings.SplitSeq(list, ",") {
		d = strings.TrimSpace(d)
		if d == "" {
			continue
		}
		if !strings.HasPrefix(d, "/") {
			return nil, errors.New("CDI spec directory " + d + " is not absolute")
		}
		if !slices.Contains(dirs, d) {
			dirs = append(dirs, d)
		}
	}
	return dirs, nil
}
