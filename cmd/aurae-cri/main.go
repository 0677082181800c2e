// Command aurae-cri serves the Kubernetes CRI v1 on a unix socket and runs
// pods as Aurae pods, on an embedded auraed or the one at --aurae-address.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"google.golang.org/grpc"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/pkg/aurae/client"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/daemon"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/roles"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/server"
	"github.com/aurae-runtime/aurae-cri/pkg/containerdproc"
	"github.com/aurae-runtime/aurae-cri/pkg/controller"
	"github.com/aurae-runtime/aurae-cri/pkg/controller/native"
	"github.com/aurae-runtime/aurae-cri/pkg/controller/vm"
	"github.com/aurae-runtime/aurae-cri/pkg/cri"
	"github.com/aurae-runtime/aurae-cri/pkg/image"
	"github.com/aurae-runtime/aurae-cri/pkg/metrics"
	"github.com/aurae-runtime/aurae-cri/pkg/netcni"
	"github.com/aurae-runtime/aurae-cri/pkg/nri"
	"github.com/aurae-runtime/aurae-cri/pkg/ocispec"
	"github.com/aurae-runtime/aurae-cri/pkg/sandbox"
	"github.com/aurae-runtime/aurae-cri/pkg/tracing"
	"github.com/aurae-runtime/aurae-cri/pkg/version"
)

const shutdownGrace = 5 * time.Second

// noFsyncEnv, set to "1", opens the state without fsync: a test-only knob
// for the benchmark that measures what the fsyncs cost.
const noFsyncEnv = "AURAE_CRI_TEST_NO_FSYNC"

func main() {
	// The embedded auraed re-executes this binary as its helpers (cell init,
	// pod holder, tty exec shim): in those roles it never gets past this
	// line. Not the guest roles: aurae-cri stays itself as PID 1.
	roles.Run()
	cfg, err := parseConfig(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "aurae-cri: %v\n", err)
		os.Exit(2)
	}
	if err := run(cfg); err != nil {
		slog.Error("aurae-cri failed", "error", err)
		os.Exit(1)
	}
}

func run(cfg config) error {
	logger := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: cfg.level}))
	slog.SetDefault(logger)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	stopTracing, err := tracing.Setup(ctx, cfg.OTLPEndpoint, "aurae-cri", version.Version)
	if err != nil {
		return err
	}
	defer tracing.Flush(stopTracing, logger)
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	// Claim the socket first: a second aurae-cri fails before touching state.
	lis, err := server.ListenUnix(cfg.Socket)
	if err != nil {
		return err
	}
	defer lis.Close()

	// What is opened here closes in the reverse order (deferred): the CRI
	// server drains first (stop accepting, the calls in flight finish or
	// are cancelled and undo their work, bounded), then the streaming
	// server and the monitors stop, then the clients (images, containerd,
	// auraed) close, then the embedded auraed drains and closes, and the
	// store closes last.
	var storeOpts sandbox.Options
	if os.Getenv(noFsyncEnv) == "1" {
		storeOpts.NoSync = true
		logger.Warn("the state is not fsynced ("+noFsyncEnv+"=1): a power loss can lose or tear it; for measurements only", "state_dir", cfg.StateDir)
	}
	store, err := sandbox.OpenWith(cfg.StateDir, storeOpts)
	if err != nil {
		return err
	}
	defer func() { _ = store.Close() }()

	obs := newObservability(cfg)
	auraeAddr := cfg.AuraeAddress
	if auraeAddr == "" {
		embedded, addr, err := startEmbeddedAuraed(ctx, cfg, logger, obs)
		if err != nil {
			return err
		}
		defer func() { _ = embedded.Close() }()
		defer server.Shutdown(logger, shutdownGrace, embedded.server)
		auraeAddr = addr
	}
	aurae, err := client.Dial(ctx, auraeAddr)
	if err != nil {
		return fmt.Errorf("connect to auraed at %s: %w", auraeAddr, err)
	}
	defer func() { _ = aurae.Close() }()
	if obs.cri != nil {
		go metrics.WatchReconnects(ctx, aurae.Conn, obs.cri.AuraeReconnected)
	}

	ctrd, err := containerdproc.Ensure(ctx, containerdproc.Config{
		Address: cfg.ContainerdAddress, StateDir: cfg.StateDir, Logger: logger,
	})
	if err != nil {
		return fmt.Errorf("containerd: %w", err)
	}
	defer func() { _ = ctrd.Close() }()
	images, err := image.New(ctx, image.Options{
		Address: ctrd.Address(), Namespace: cfg.ImageNamespace, RegistryConfigDir: cfg.RegistryConfigDir, Logger: logger,
		Metrics: obs.cri,
	})
	if err != nil {
		return fmt.Errorf("image service: %w", err)
	}
	defer func() { _ = images.Close() }()

	if cfg.DefaultCNIConfig {
		if err := netcni.WriteDefaultConfig(cfg.CNIConfDir, ""); err != nil {
			return fmt.Errorf("default CNI config: %w", err)
		}
	}
	cni, err := netcni.New(netcni.Config{ConfDir: cfg.CNIConfDir, BinDir: cfg.CNIBinDir, Logger: logger})
	if err != nil {
		return fmt.Errorf("cni: %w", err)
	}
	host := native.New(aurae.Conn)
	controllers := map[string]controller.Controller{"": host, "runc": host}
	closeVM, err := addVMController(controllers, cfg, aurae.Conn, logger, obs)
	if err != nil {
		return err
	}
	// After the CRI server drained: no ReopenContainerLog is in flight.
	defer closeVM()
	cdiDirs, err := ocispec.SplitCDISpecDirs(cfg.CDISpecDirs)
	if err != nil {
		return err
	}
	var cdi ocispec.CDI
	if len(cdiDirs) > 0 {
		if cdi, err = ocispec.NewCDICache(cdiDirs); err != nil {
			return err
		}
	}
	var plugins *nri.NRI
	if cfg.EnableNRI {
		if plugins, err = nri.New(nri.Config{
			SocketPath: cfg.NRISocket, PluginPath: cfg.NRIPluginDir, PluginConfigPath: cfg.NRIPluginConfigDir,
			RegistrationTimeout: time.Duration(cfg.NRIRegistrationTimeout), RequestTimeout: time.Duration(cfg.NRIRequestTimeout),
			RuntimeName: "aurae-cri", RuntimeVersion: version.Version, VMHandlers: vm.Handlers, Logger: logger,
		}, store); err != nil {
			return err
		}
	}
	rt, err := cri.NewRuntime(cri.Config{
		RootDir:        cfg.StateDir,
		Controllers:    controllers,
		Images:         images,
		Network:        cri.CNI{Manager: cni, Metrics: obs.cri},
		Store:          store,
		CgroupParent:   cfg.CgroupParent,
		CgroupDriver:   string(cfg.driver),
		Logger:         logger,
		RuntimeName:    "aurae-cri",
		RuntimeVersion: version.Version,
		CDI:            cdi,
		PidsLimit:      cfg.PidsLimit,
		Fault:          faultHook(logger),
		Metrics:        obs.cri,
		NRI:            criNRI(plugins),
	})
	if err != nil {
		return err
	}

	defer rt.Close()
	streams, err := rt.StartStreaming(cfg.StreamAddress)
	if err != nil {
		return err
	}
	defer func() { _ = streams.Close() }()

	if obs.reg != nil {
		obs.reg.MustRegister(rt.StateCollectors()...)
		ms, err := metrics.Serve(cfg.MetricsAddress, nil, obs.reg, logger)
		if err != nil {
			return err
		}
		defer func() { _ = ms.Close() }()
	}
	srv := server.NewObserved(logger, obs.criGRPC)
	runtimeapi.RegisterRuntimeServiceServer(srv, rt)
	runtimeapi.RegisterImageServiceServer(srv, images)
	defer server.Shutdown(logger, shutdownGrace, srv)
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(lis) }()
	// Calls answer Unavailable until the state is reconciled.
	if err := rt.Recover(ctx); err != nil {
		return fmt.Errorf("recover: %w", err)
	}
	if plugins != nil {
		// After recovery: a plugin that connects is synchronized with
		// the recovered pods and containers.
		if err := plugins.Start(rt); err != nil {
			return err
		}
		defer plugins.Stop()
	}
	logger.Info("aurae-cri serving", "version", version.Version, "socket", cfg.Socket, "aurae", auraeAddr,
		"containerd", ctrd.Address(), "state_dir", cfg.StateDir, "stream_address", streams.Addr(), "cgroup_driver", cfg.driver)
	select {
	case <-ctx.Done():
		logger.Info("aurae-cri shutting down", "reason", "signal")
		stop() // a second signal ends the process at once
		return nil
	case err := <-serveErr:
		return fmt.Errorf("serve: %w", err)
	}
}

type embeddedAuraed struct {
	*daemon.Daemon
	server *grpc.Server
}

// startEmbeddedAuraed serves the Aurae API in this process, on a socket in
// the state dir that only root can reach.
func startEmbeddedAuraed(ctx context.Context, cfg config, logger *slog.Logger, obs observability) (*embeddedAuraed, string, error) {
	dir := filepath.Join(cfg.StateDir, "auraed")
	d, err := daemon.New(ctx, daemon.Config{
		StateDir:           dir,
		CgroupRoot:         cfg.CgroupRoot,
		CgroupDriver:       cfg.driver,
		OCIRuntime:         cfg.OCIRuntime,
		AllowOldOCIRuntime: cfg.AllowOldOCIRuntime,
		VMTemplates:        cfg.VMTemplates,
		VMPoolSize:         cfg.VMPoolSize,
		Logger:             logger.With("component", "auraed"),
	})
	if err != nil {
		return nil, "", err
	}
	sock := filepath.Join(dir, "aurae.sock")
	lis, err := server.ListenUnix(sock)
	if err != nil {
		_ = d.Close()
		return nil, "", err
	}
	s := server.NewObserved(logger.With("component", "auraed"), obs.auraedGRPC)
	d.Register(s)
	if obs.reg != nil {
		obs.reg.MustRegister(d.Collectors()...)
	}
	go func() {
		if err := s.Serve(lis); err != nil && !errors.Is(err, net.ErrClosed) {
			logger.Error("embedded auraed stopped serving", "error", err)
		}
	}()
	return &embeddedAuraed{Daemon: d, server: s}, "unix://" + sock, nil
}

// criNRI is plugins as the runtime's hooks; nil (NRI disabled) is none.
func criNRI(plugins *nri.NRI) cri.NRI {
	if plugins == nil {
		return nil
	}
	return plugins
}
