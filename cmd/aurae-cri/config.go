package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/pelletier/go-toml/v2"

	"github.com/aurae-runtime/aurae-cri/pkg/aurae/cgroup"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/pods"
	"github.com/aurae-runtime/aurae-cri/pkg/controller/vm"
	"github.com/aurae-runtime/aurae-cri/pkg/metrics"
	"github.com/aurae-runtime/aurae-cri/pkg/nri"
	"github.com/aurae-runtime/aurae-cri/pkg/ocispec"
	"github.com/aurae-runtime/aurae-cri/pkg/tracing"
)

// config is aurae-cri's configuration: flags, or a TOML file whose keys are
// the flag names; a flag given on the command line wins over the file.
type config struct {
	Socket            string `toml:"socket"`
	StateDir          string `toml:"state-dir"`
	AuraeAddress      string `toml:"aurae-address"`
	ContainerdAddress string `toml:"containerd-address"`
	RegistryConfigDir string `toml:"registry-config-dir"`
	CNIConfDir        string `toml:"cni-conf-dir"`
	CNIBinDir         string `toml:"cni-bin-dir"`
	StreamAddress     string `toml:"stream-address"`
	LogLevel          string `toml:"log-level"`
	CgroupRoot        string `toml:"cgroup-root"`
	CgroupParent      string `toml:"cgroup-parent"`
	CgroupDriver      string `toml:"cgroup-driver"`
	ImageNamespace    string `toml:"image-namespace"`
	// OCIRuntime and AllowOldOCIRuntime configure the embedded auraed.
	OCIRuntime         string `toml:"oci-runtime"`
	AllowOldOCIRuntime bool   `toml:"allow-old-oci-runtime"`
	// DefaultCNIConfig writes a bridge + portmap + loopback config into an
	// empty CNI conf dir at start (what `make run` asks for).
	DefaultCNIConfig bool `toml:"write-default-cni-config"`
	// VMKernel and VMInitramfs are the guest image of VM pods (handlers
	// aurae-vm and kata, served only when both exist); VMOverheadMiB is added
	// to a VM pod's memory.
	VMKernel      string `toml:"vm-kernel"`
	VMInitramfs   string `toml:"vm-initramfs"`
	VMOverheadMiB uint   `toml:"vm-overhead-mib"`
	// VMTemplates starts VM pods' VMs from VM templates where the embedded
	// auraed can (auraed's --vm-templates).
	VMTemplates bool `toml:"vm-templates"`
	// VMPoolSize keeps that many idle VMs cloned from the template last
	// used (auraed's --vm-pool-size).
	VMPoolSize int `toml:"vm-pool-size"`
	// VMMaxMemMiB bounds a VM pod's memory; VMAllowedAnnotations are the
	// Kata sizing annotations pods may use (comma-separated; none by default).
	VMMaxMemMiB          uint   `toml:"vm-max-memory-mib"`
	VMAllowedAnnotations string `toml:"vm-allowed-annotations"`
	// CDISpecDirs are the directories of CDI specs (comma-separated; later
	// ones win); empty refuses CDI devices.
	CDISpecDirs string `toml:"cdi-spec-dirs"`
	// PidsLimit is every container's pids cgroup limit (CRI-O's
	// pids_limit; the CRI has no per-container field); 0: none.
	PidsLimit int64 `toml:"pids-limit"`
	// MetricsAddress serves /metrics (Prometheus) on host:port; empty:
	// off. Plain HTTP, so loopback addresses only.
	MetricsAddress string `toml:"metrics-address"`
	// OTLPEndpoint receives the spans of aurae-cri's and the embedded
	// auraed's calls (OTLP over gRPC, host:port on loopback); empty: none.
	OTLPEndpoint string `toml:"otlp-endpoint"`
	// EnableNRI serves NRI plugins on NRISocket (github.com/containerd/nri);
	// the plugin dirs and timeouts are NRI's.
	EnableNRI              bool     `toml:"enable-nri"`
	NRISocket              string   `toml:"nri-socket"`
	NRIPluginDir           string   `toml:"nri-plugin-dir"`
	NRIPluginConfigDir     string   `toml:"nri-plugin-config-dir"`
	NRIRegistrationTimeout duration `toml:"nri-plugin-registration-timeout"`
	NRIRequestTimeout      duration `toml:"nri-plugin-request-timeout"`

	level  slog.Level
	driver cgroup.Driver // resolved from CgroupDriver and the host
}

func parseConfig(args []string) (config, error) {
	cfg := config{
		Socket:                 "/run/aurae/cri.sock",
		StateDir:               "/var/lib/aurae-cri",
		ContainerdAddress:      "/run/containerd/containerd.sock",
		CNIConfDir:             "/etc/cni/net.d",
		CNIBinDir:              "/opt/cni/bin",
		StreamAddress:          "127.0.0.1:0",
		LogLevel:               "info",
		CgroupRoot:             "aurae",
		CgroupParent:           "pods",
		ImageNamespace:         "aurae",
		OCIRuntime:             pods.DefaultRuntime(),
		VMKernel:               "/var/lib/aurae/vm/vmlinux",
		VMInitramfs:            "/var/lib/aurae/vm/initramfs.cpio.gz",
		VMMaxMemMiB:            8192,
		VMTemplates:            true,
		CDISpecDirs:            "/etc/cdi,/var/run/cdi",
		NRISocket:              nri.DefaultSocketPath,
		NRIPluginDir:           nri.DefaultPluginPath,
		NRIPluginConfigDir:     nri.DefaultPluginConfigPath,
		NRIRegistrationTimeout: duration(nri.DefaultRegistrationTimeout),
		NRIRequestTimeout:      duration(nri.DefaultRequestTimeout),
	}
	fs := flag.NewFlagSet("aurae-cri", flag.ContinueOnError)
	configFile := fs.String("config", "", "TOML file setting the flags below (keys are the flag names)")
	fs.StringVar(&cfg.Socket, "socket", cfg.Socket, "unix socket to serve the CRI on (mode 0600)")
	fs.StringVar(&cfg.StateDir, "state-dir", cfg.StateDir, "directory of aurae-cri's state (and of the embedded auraed's)")
	fs.StringVar(&cfg.AuraeAddress, "aurae-address", cfg.AuraeAddress, "auraed to use (unix:///path); empty runs an embedded auraed")
	fs.StringVar(&cfg.ContainerdAddress, "containerd-address", cfg.ContainerdAddress, "containerd for images; when none answers there, aurae-cri starts its own")
	fs.StringVar(&cfg.RegistryConfigDir, "registry-config-dir", cfg.RegistryConfigDir, "registry hosts (containerd's hosts.toml layout: <dir>/<host>/hosts.toml)")
	fs.StringVar(&cfg.CNIConfDir, "cni-conf-dir", cfg.CNIConfDir, "CNI network configs")
	fs.StringVar(&cfg.CNIBinDir, "cni-bin-dir", cfg.CNIBinDir, "CNI plugin binaries")
	fs.StringVar(&cfg.StreamAddress, "stream-address", cfg.StreamAddress, "address of the exec/attach/port-forward streaming server")
	fs.StringVar(&cfg.LogLevel, "log-level", cfg.LogLevel, "debug, info, warn or error")
	fs.StringVar(&cfg.CgroupRoot, "cgroup-root", cfg.CgroupRoot, "cgroup under which the embedded auraed makes pods")
	fs.StringVar(&cfg.CgroupParent, "cgroup-parent", cfg.CgroupParent, "cgroup (below the root) of pods whose request names none")
	fs.StringVar(&cfg.CgroupDriver, "cgroup-driver", cfg.CgroupDriver, "who makes pods' cgroups, as RuntimeConfig answers the kubelet: systemd (transient units over D-Bus, runc --systemd-cgroup) or cgroupfs; default systemd when PID 1 is systemd on a cgroup v2 host, else cgroupfs")
	fs.StringVar(&cfg.ImageNamespace, "image-namespace", cfg.ImageNamespace, "containerd namespace of the images")
	fs.StringVar(&cfg.OCIRuntime, "oci-runtime", cfg.OCIRuntime, "OCI runtime binary of the embedded auraed's pods (default: the runc make deps pins at "+pods.PinnedRuntime+" when installed, else runc on PATH)")
	fs.BoolVar(&cfg.AllowOldOCIRuntime, "allow-old-oci-runtime", cfg.AllowOldOCIRuntime, "let the embedded auraed start with an OCI runtime older than "+pods.MinRuntimeVersion.String())
	fs.BoolVar(&cfg.DefaultCNIConfig, "write-default-cni-config", cfg.DefaultCNIConfig, "write a default bridge network config into --cni-conf-dir when it holds none")
	fs.StringVar(&cfg.VMKernel, "vm-kernel", cfg.VMKernel, "guest kernel of VM pods (make vm-image)")
	fs.StringVar(&cfg.VMInitramfs, "vm-initramfs", cfg.VMInitramfs, "guest initramfs of VM pods (make vm-image); must sit beside --vm-kernel as initramfs.cpio.gz")
	fs.BoolVar(&cfg.VMTemplates, "vm-templates", cfg.VMTemplates, "start VM pods' VMs from VM templates (a guest booted once and saved, under the embedded auraed's state dir) where it can; any failure boots cold")
	fs.IntVar(&cfg.VMPoolSize, "vm-pool-size", cfg.VMPoolSize, "with vm-templates, keep this many clones of the template last used running idle, so that a VM pod's VM starts by taking one (each costs its guest's memory); 0: no pool")
	fs.UintVar(&cfg.VMOverheadMiB, "vm-overhead-mib", cfg.VMOverheadMiB, "memory added to each VM pod's VM (MiB)")
	fs.UintVar(&cfg.VMMaxMemMiB, "vm-max-memory-mib", cfg.VMMaxMemMiB, "most memory a VM pod's VM may have, overhead included (MiB; 0: no bound)")
	fs.StringVar(&cfg.VMAllowedAnnotations, "vm-allowed-annotations", cfg.VMAllowedAnnotations, "Kata sizing annotations VM pods may use, comma-separated ("+vm.AnnotationVCPUs+", "+vm.AnnotationMemMiB+"); none by default")
	fs.StringVar(&cfg.CDISpecDirs, "cdi-spec-dirs", cfg.CDISpecDirs, "directories of CDI specs, comma-separated (later ones win); empty refuses CDI devices")
	fs.StringVar(&cfg.OTLPEndpoint, "otlp-endpoint", cfg.OTLPEndpoint, "OpenTelemetry collector (OTLP over gRPC, host:port on a loopback address) to send the spans of CRI and Aurae calls to; empty: none")
	fs.Int64Var(&cfg.PidsLimit, "pids-limit", cfg.PidsLimit, "pids cgroup limit of every container (as CRI-O's pids_limit); 0: none")
	fs.StringVar(&cfg.MetricsAddress, "metrics-address", cfg.MetricsAddress, "host:port to serve Prometheus metrics on at /metrics, in plain HTTP: loopback addresses only (e.g. 127.0.0.1:9898); empty: off")
	fs.BoolVar(&cfg.EnableNRI, "enable-nri", cfg.EnableNRI, "serve NRI plugins (Node Resource Interface) on --nri-socket")
	fs.StringVar(&cfg.NRISocket, "nri-socket", cfg.NRISocket, "unix socket NRI plugins connect to (mode 0600)")
	fs.StringVar(&cfg.NRIPluginDir, "nri-plugin-dir", cfg.NRIPluginDir, "NRI plugins aurae-cri starts itself (NRI's pre-installed plugins)")
	fs.StringVar(&cfg.NRIPluginConfigDir, "nri-plugin-config-dir", cfg.NRIPluginConfigDir, "configs of the plugins in --nri-plugin-dir")
	fs.Var(&cfg.NRIRegistrationTimeout, "nri-plugin-registration-timeout", "how long an NRI plugin may take to register")
	fs.Var(&cfg.NRIRequestTimeout, "nri-plugin-request-timeout", "how long an NRI plugin may take to answer an event; one that takes longer is disconnected and the pod goes on")
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if *configFile != "" {
		b, err := os.ReadFile(*configFile)
		if err != nil {
			return cfg, fmt.Errorf("--config: %w", err)
		}
		fromFile := cfg
		dec := toml.NewDecoder(bytes.NewReader(b))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&fromFile); err != nil {
			return cfg, fmt.Errorf("--config %s: %w", *configFile, err)
		}
		// Flags given on the command line win.
		explicit := cfg
		cfg = fromFile
		fs.Visit(func(f *flag.Flag) {
			switch f.Name {
			case "socket":
				cfg.Socket = explicit.Socket
			case "state-dir":
				cfg.StateDir = explicit.StateDir
			case "aurae-address":
				cfg.AuraeAddress = explicit.AuraeAddress
			case "containerd-address":
				cfg.ContainerdAddress = explicit.ContainerdAddress
			case "registry-config-dir":
				cfg.RegistryConfigDir = explicit.RegistryConfigDir
			case "cni-conf-dir":
				cfg.CNIConfDir = explicit.CNIConfDir
			case "cni-bin-dir":
				cfg.CNIBinDir = explicit.CNIBinDir
			case "stream-address":
				cfg.StreamAddress = explicit.StreamAddress
			case "log-level":
				cfg.LogLevel = explicit.LogLevel
			case "cgroup-root":
				cfg.CgroupRoot = explicit.CgroupRoot
			case "cgroup-parent":
				cfg.CgroupParent = explicit.CgroupParent
			case "cgroup-driver":
				cfg.CgroupDriver = explicit.CgroupDriver
			case "image-namespace":
				cfg.ImageNamespace = explicit.ImageNamespace
			case "oci-runtime":
				cfg.OCIRuntime = explicit.OCIRuntime
			case "allow-old-oci-runtime":
				cfg.AllowOldOCIRuntime = explicit.AllowOldOCIRuntime
			case "write-default-cni-config":
				cfg.DefaultCNIConfig = explicit.DefaultCNIConfig
			case "vm-kernel":
				cfg.VMKernel = explicit.VMKernel
			case "vm-initramfs":
				cfg.VMInitramfs = explicit.VMInitramfs
			case "vm-overhead-mib":
				cfg.VMOverheadMiB = explicit.VMOverheadMiB
			case "vm-max-memory-mib":
				cfg.VMMaxMemMiB = explicit.VMMaxMemMiB
			case "vm-allowed-annotations":
				cfg.VMAllowedAnnotations = explicit.VMAllowedAnnotations
			case "cdi-spec-dirs":
				cfg.CDISpecDirs = explicit.CDISpecDirs
			case "pids-limit":
				cfg.PidsLimit = explicit.PidsLimit
			case "otlp-endpoint":
				cfg.OTLPEndpoint = explicit.OTLPEndpoint
			case "metrics-address":
				cfg.MetricsAddress = explicit.MetricsAddress
			case "enable-nri":
				cfg.EnableNRI = explicit.EnableNRI
			case "nri-socket":
				cfg.NRISocket = explicit.NRISocket
			case "nri-plugin-dir":
				cfg.NRIPluginDir = explicit.NRIPluginDir
			case "nri-plugin-config-dir":
				cfg.NRIPluginConfigDir = explicit.NRIPluginConfigDir
			case "nri-plugin-registration-timeout":
				cfg.NRIRegistrationTimeout = explicit.NRIRegistrationTimeout
			case "nri-plugin-request-timeout":
				cfg.NRIRequestTimeout = explicit.NRIRequestTimeout
			}
		})
	}
	if err := cfg.level.UnmarshalText([]byte(cfg.LogLevel)); err != nil {
		return cfg, fmt.Errorf("log-level: %w", err)
	}
	driver, err := cgroup.ChooseDriver(cfg.CgroupDriver, cgroup.ThisHost())
	if err != nil {
		return cfg, fmt.Errorf("cgroup-driver: %w", err)
	}
	cfg.driver = driver
	for name, p := range map[string]string{"socket": cfg.Socket, "state-dir": cfg.StateDir, "cni-conf-dir": cfg.CNIConfDir} {
		if p == "" || !filepath.IsAbs(p) {
			return cfg, fmt.Errorf("%s must be an absolute path, got %q", name, p)
		}
	}
	if cfg.OCIRuntime == "" {
		return cfg, errors.New("oci-runtime must not be empty")
	}
	if cfg.RegistryConfigDir != "" && !filepath.IsAbs(cfg.RegistryConfigDir) {
		return cfg, errors.New("registry-config-dir must be an absolute path")
	}
	if _, err := cfg.allowedAnnotations(); err != nil {
		return cfg, err
	}
	if _, err := ocispec.SplitCDISpecDirs(cfg.CDISpecDirs); err != nil {
		return cfg, fmt.Errorf("cdi-spec-dirs: %w", err)
	}
	if cfg.MetricsAddress != "" {
		// aurae-cri serves its API on a unix socket only: it has no TLS
		// configuration to serve metrics with elsewhere.
		if err := metrics.CheckAddress(cfg.MetricsAddress, false); err != nil {
			return cfg, fmt.Errorf("metrics-address: %w", err)
		}
	}
	if err := tracing.CheckEndpoint(cfg.OTLPEndpoint); err != nil {
		return cfg, fmt.Errorf("otlp-endpoint: %w", err)
	}
	if cfg.EnableNRI {
		if !filepath.IsAbs(cfg.NRISocket) {
			return cfg, fmt.Errorf("nri-socket must be an absolute path, got %q", cfg.NRISocket)
		}
		if cfg.NRIRegistrationTimeout <= 0 || cfg.NRIRequestTimeout <= 0 {
			return cfg, errors.New("nri-plugin-registration-timeout and nri-plugin-request-timeout must be positive")
		}
	}
	if cfg.PidsLimit < 0 {
		return cfg, fmt.Errorf("pids-limit must be 0 (none) or more, got %d", cfg.PidsLimit)
	}
	return cfg, nil
}

// allowedAnnotations parses --vm-allowed-annotations: only Kata's sizing
// annotations may be named.
func (cfg config) allowedAnnotations() (map[string]bool, error) {
	out := map[string]bool{}
	for _, a := range strings.Split(cfg.VMAllowedAnnotations, ",") {
		a = strings.TrimSpace(a)
		switch a {
		case "":
		case vm.AnnotationVCPUs, vm.AnnotationMemMiB:
			out[a] = true
		default:
			return nil, fmt.Errorf("vm-allowed-annotations: %q is not one of %s, %s", a, vm.AnnotationVCPUs, vm.AnnotationMemMiB)
		}
	}
	return out, nil
}

// duration is a time.Duration read as "2s" from flags and from the TOML
// file.
type duration time.Duration

func (d *duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return err
	}
	*d = duration(v)
	return nil
}

func (d *duration) Set(s string) error { return d.UnmarshalText([]byte(s)) }
func (d duration) String() string      { return time.Duration(d).String() }
