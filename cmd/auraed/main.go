// Command auraed is the Aurae daemon: it serves the Aurae API (cells,
// pods, VMs, discovery, observe, the os node service) on a unix socket
// and, with mutual TLS, on TCP.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/aurae-runtime/aurae-cri/pkg/aurae/cgroup"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/daemon"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/observe"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/osinfo"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/pods"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/roles"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/server"
	"github.com/aurae-runtime/aurae-cri/pkg/metrics"
	"github.com/aurae-runtime/aurae-cri/pkg/tracing"
	"github.com/aurae-runtime/aurae-cri/pkg/version"
)

// shutdownGrace bounds GracefulStop: open streams (log and signal
// subscribers) never end by themselves, so after this the server stops hard.
const shutdownGrace = 5 * time.Second

type config struct {
	socket          string
	stateDir        string
	logLevel        slog.Level
	listen          string
	tlsCert         string
	tlsKey          string
	clientCA        string
	stopGracePeriod time.Duration
	cgroupRoot      string
	cgroupDriver    cgroup.Driver
	ociRuntime      string
	allowOldRuntime bool
	nodeName        string
	peers           peerFlag
	peerCert        string
	peerKey         string
	peerCA          string
	criEndpoint     string
	vmImageDir      string
	vmTemplates     bool
	vmPoolSize      int
	metricsAddress  string
	otlpEndpoint    string
	containerd      string
	registryConfig  string
}

// peerFlag is the repeatable --peer name=address.
type peerFlag map[string]string

func (p peerFlag) String() string {
	var out []string
	for name, addr := range p {
		out = append(out, name+"="+addr)
	}
	sort.Strings(out)
	return strings.Join(out, ",")
}

func (p peerFlag) Set(v string) error {
	name, addr, ok := strings.Cut(v, "=")
	if !ok || name == "" || addr == "" {
		return fmt.Errorf("%q: want name=host:port", v)
	}
	if _, _, err := net.SplitHostPort(strings.TrimPrefix(addr, "tcp://")); err != nil {
		return fmt.Errorf("%q: %w", v, err)
	}
	if _, dup := p[name]; dup {
		return fmt.Errorf("peer %q given twice", name)
	}
	p[name] = addr
	return nil
}

func main() {
	// auraed re-executes itself as its own helpers (cell init, pod holder,
	// tty exec shim) and, in a microVM, is the guest's init and its serving
	// auraed: in those roles it never gets past this line.
	roles.Run(roles.Guest)

	cfg, err := parseFlags(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "auraed: %v\n", err)
		os.Exit(2)
	}
	if err := run(cfg); err != nil {
		slog.Error("auraed failed", "error", err)
		os.Exit(1)
	}
}

func parseFlags(args []string) (config, error) {
	cfg := config{peers: peerFlag{}}
	fs := flag.NewFlagSet("auraed", flag.ContinueOnError)
	fs.StringVar(&cfg.socket, "socket", "/run/aurae/aurae.sock", "unix socket to serve the Aurae API on (mode 0600)")
	fs.StringVar(&cfg.stateDir, "state-dir", "/var/lib/aurae", "directory of auraed's state")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	fs.StringVar(&cfg.listen, "listen", "", "optional TCP address (host:port) to serve on too, with mutual TLS (needs --tls-cert, --tls-key and --client-ca)")
	fs.StringVar(&cfg.tlsCert, "tls-cert", "", "server certificate (PEM) for --listen")
	fs.StringVar(&cfg.tlsKey, "tls-key", "", "server key (PEM) for --listen")
	fs.StringVar(&cfg.clientCA, "client-ca", "", "CA bundle (PEM) that client certificates must chain to, for --listen")
	fs.DurationVar(&cfg.stopGracePeriod, "stop-grace-period", 10*time.Second, "time between SIGTERM and SIGKILL when a Stop request names none")
	fs.StringVar(&cfg.cgroupRoot, "cgroup-root", "aurae", "cgroup under which cells are created")
	cgroupDriver := fs.String("cgroup-driver", "", "who makes pods' cgroups: systemd (transient units over D-Bus) or cgroupfs; default systemd when PID 1 is systemd on a cgroup v2 host, else cgroupfs")
	fs.StringVar(&cfg.ociRuntime, "oci-runtime", pods.DefaultRuntime(), "OCI runtime binary of pods (default: the runc make deps pins at "+pods.PinnedRuntime+" when installed, else runc on PATH)")
	fs.BoolVar(&cfg.allowOldRuntime, "allow-old-oci-runtime", false, "start even when --oci-runtime is older than "+pods.MinRuntimeVersion.String())
	fs.StringVar(&cfg.nodeName, "node-name", "", "this node's name in the os service's `nodes` and answers (default: the host name)")
	fs.Var(cfg.peers, "peer", "a node the os service forwards calls naming it to, as name=host:port of its --listen (repeatable; needs --peer-cert, --peer-key and --peer-ca)")
	fs.StringVar(&cfg.peerCert, "peer-cert", "", "client certificate (PEM) presented to --peer nodes")
	fs.StringVar(&cfg.peerKey, "peer-key", "", "key (PEM) of --peer-cert")
	fs.StringVar(&cfg.peerCA, "peer-ca", "", "CA bundle (PEM) the --peer nodes' server certificates chain to")
	fs.StringVar(&cfg.criEndpoint, "cri-endpoint", "", "the node's CRI runtime (unix:///path), for the os service's driver CRI; empty refuses that driver")
	fs.StringVar(&cfg.vmImageDir, "vm-image-dir", "/var/lib/aurae/vm", "guest image (vmlinux, initramfs.cpio.gz of make vm-image) that runtime.Core's RunVirtualMachine boots")
	fs.BoolVar(&cfg.vmTemplates, "vm-templates", true, "start VMs from VM templates (a guest booted once and saved, under --state-dir/vm-templates) where the hypervisor can: QEMU's q35 machine (TCG), VMs without drives; any failure boots cold")
	fs.IntVar(&cfg.vmPoolSize, "vm-pool-size", 0, "with --vm-templates, keep this many clones of the template last used running idle (each costs its guest's memory and a hypervisor), so that a VM starts by taking one; 0: no pool")
	fs.StringVar(&cfg.metricsAddress, "metrics-address", "", "host:port to serve Prometheus metrics on at /metrics; plain HTTP on a loopback address, else with the mutual TLS of --listen (--tls-cert, --tls-key, --client-ca); empty: off")
	fs.StringVar(&cfg.otlpEndpoint, "otlp-endpoint", "", "OpenTelemetry collector (OTLP over gRPC, host:port on a loopback address) to send the spans of Aurae calls to; empty: none")
	fs.StringVar(&cfg.containerd, "containerd-address", "/run/containerd/containerd.sock", "containerd that runtime.Core's RunCell pulls images through; when none answers there, auraed starts its own under --state-dir on first use")
	fs.StringVar(&cfg.registryConfig, "registry-config-dir", "", "registry hosts for RunCell's pulls (containerd's hosts.toml layout: <dir>/<host>/hosts.toml); empty: HTTPS, plain HTTP for loopback registries")
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	var err error
	if cfg.cgroupDriver, err = cgroup.ChooseDriver(*cgroupDriver, cgroup.ThisHost()); err != nil {
		return cfg, fmt.Errorf("--cgroup-driver: %w", err)
	}
	if err := cfg.logLevel.UnmarshalText([]byte(*logLevel)); err != nil {
		return cfg, fmt.Errorf("--log-level: %w", err)
	}
	tlsSet := cfg.tlsCert != "" || cfg.tlsKey != "" || cfg.clientCA != ""
	switch {
	case cfg.listen != "" && (cfg.tlsCert == "" || cfg.tlsKey == "" || cfg.clientCA == ""):
		return cfg, errors.New("--listen serves only with mutual TLS: give --tls-cert, --tls-key and --client-ca")
	case cfg.listen == "" && tlsSet:
		return cfg, errors.New("--tls-cert, --tls-key and --client-ca apply to --listen, which is not set")
	case cfg.socket == "":
		return cfg, errors.New("--socket must not be empty")
	case cfg.ociRuntime == "":
		return cfg, errors.New("--oci-runtime must not be empty")
	case len(cfg.peers) > 0 && (cfg.peerCert == "" || cfg.peerKey == "" || cfg.peerCA == ""):
		return cfg, errors.New("--peer is reached only with mutual TLS: give --peer-cert, --peer-key and --peer-ca")
	case cfg.criEndpoint != "" && !strings.HasPrefix(cfg.criEndpoint, "unix:///"):
		return cfg, errors.New("--cri-endpoint must be unix:///path")
	case cfg.stopGracePeriod <= 0:
		return cfg, errors.New("--stop-grace-period must be positive")
	case cfg.registryConfig != "" && !filepath.IsAbs(cfg.registryConfig):
		return cfg, errors.New("--registry-config-dir must be an absolute path")
	}
	if cfg.metricsAddress != "" {
		if err := metrics.CheckAddress(cfg.metricsAddress, cfg.listen != ""); err != nil {
			return cfg, fmt.Errorf("--metrics-address: %w", err)
		}
	}
	if err := tracing.CheckEndpoint(cfg.otlpEndpoint); err != nil {
		return cfg, fmt.Errorf("--otlp-endpoint: %w", err)
	}
	return cfg, nil
}

func run(cfg config) error {
	logs := observe.NewLogBroadcaster(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: cfg.logLevel}))
	logger := slog.New(logs)
	slog.SetDefault(logger)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	stopTracing, err := tracing.Setup(ctx, cfg.otlpEndpoint, "auraed", version.Version)
	if err != nil {
		return err
	}
	defer tracing.Flush(stopTracing, logger)

	if err := os.MkdirAll(cfg.stateDir, 0o700); err != nil {
		return fmt.Errorf("create state dir: %w", err)
	}
	// Claim the socket before touching any state, so that a second auraed
	// fails here instead of reconciling cells under the first one's feet.
	unixLis, err := server.ListenUnix(cfg.socket)
	if err != nil {
		return err
	}
	var tcpLis net.Listener
	var tcpCreds grpc.ServerOption
	if cfg.listen != "" {
		tlsCfg, err := server.TLSConfig(cfg.tlsCert, cfg.tlsKey, cfg.clientCA)
		if err != nil {
			_ = unixLis.Close()
			return err
		}
		tcpCreds = grpc.Creds(credentials.NewTLS(tlsCfg))
		if tcpLis, err = net.Listen("tcp", cfg.listen); err != nil {
			_ = unixLis.Close()
			return fmt.Errorf("listen on %s: %w", cfg.listen, err)
		}
	}

	d, err := daemon.New(ctx, daemon.Config{
		StateDir:           cfg.stateDir,
		CgroupRoot:         cfg.cgroupRoot,
		CgroupDriver:       cfg.cgroupDriver,
		StopGracePeriod:    cfg.stopGracePeriod,
		OCIRuntime:         cfg.ociRuntime,
		AllowOldOCIRuntime: cfg.allowOldRuntime,
		Logger:             logger,
		Logs:               logs,
		VMImageDir:         cfg.vmImageDir,
		VMTemplates:        cfg.vmTemplates,
		VMPoolSize:         cfg.vmPoolSize,
		SelfAddress:        "unix://" + cfg.socket,
		Images:             daemon.ImagesConfig{ContainerdAddress: cfg.containerd, RegistryConfigDir: cfg.registryConfig},
		Node: osinfo.Config{
			NodeName:    cfg.nodeName,
			Peers:       cfg.peers,
			PeerCert:    cfg.peerCert,
			PeerKey:     cfg.peerKey,
			PeerCA:      cfg.peerCA,
			CRIEndpoint: cfg.criEndpoint,
		},
	})
	if err != nil {
		_ = unixLis.Close()
		if tcpLis != nil {
			_ = tcpLis.Close()
		}
		return err
	}
	defer func() {
		if err := d.Close(); err != nil {
			logger.Error("close services", "error", err)
		}
	}()
	var obs *metrics.GRPC
	if cfg.metricsAddress != "" {
		reg := metrics.NewRegistry()
		obs = metrics.NewGRPC(reg, metrics.AuraedNamespace)
		reg.MustRegister(d.Collectors()...)
		ms, err := serveMetrics(cfg, reg, logger)
		if err != nil {
			_ = unixLis.Close()
			if tcpLis != nil {
				_ = tcpLis.Close()
			}
			return err
		}
		defer func() { _ = ms.Close() }()
	}
	register := d.Register
	servers := []*grpc.Server{server.NewObserved(logger, obs)}
	register(servers[0])
	listeners := []net.Listener{unixLis}
	if tcpLis != nil {
		s := server.NewObserved(logger, obs, tcpCreds)
		register(s)
		servers = append(servers, s)
		listeners = append(listeners, tcpLis)
	}

	serveErr := make(chan error, len(servers))
	for i, s := range servers {
		go func() { serveErr <- s.Serve(listeners[i]) }()
	}
	listening := ""
	if tcpLis != nil {
		listening = tcpLis.Addr().String() // the port chosen for ":0"
	}
	logger.Info("auraed serving", "version", version.Version, "pid", os.Getpid(),
		"socket", cfg.socket, "listen", listening, "state_dir", cfg.stateDir, "cgroup_root", cfg.cgroupRoot, "cgroup_driver", cfg.cgroupDriver)

	var runErr error
	select {
	case <-ctx.Done():
		logger.Info("auraed shutting down", "reason", "signal")
	case err := <-serveErr:
		runErr = fmt.Errorf("serve: %w", err)
	}
	stop()
	server.Shutdown(logger, shutdownGrace, servers...)
	logger.Info("auraed stopped")
	return runErr
}

// serveMetrics serves reg at --metrics-address: in plain HTTP on a
// loopback address, else with the mutual TLS of --listen (parseFlags
// refused a non-loopback address without it).
func serveMetrics(cfg config, reg *prometheus.Registry, logger *slog.Logger) (*metrics.Server, error) {
	var tlsCfg *tls.Config
	if metrics.CheckAddress(cfg.metricsAddress, false) != nil {
		var err error
		if tlsCfg, err = server.TLSConfig(cfg.tlsCert, cfg.tlsKey, cfg.clientCA); err != nil {
			return nil, fmt.Errorf("metrics: %w", err)
		}
	}
	return metrics.Serve(cfg.metricsAddress, tlsCfg, reg, logger)
}
