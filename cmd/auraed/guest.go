package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"google.golang.org/grpc"

	"github.com/aurae-runtime/aurae-cri/pkg/aurae/daemon"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/guest"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/observe"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/server"
	"github.com/aurae-runtime/aurae-cri/pkg/version"
)

// maybeRunGuest runs auraed in a microVM: as the guest's init when it is
// PID 1 (or given --guest first), or as the serving auraed that init
// started. In either role it never returns.
func maybeRunGuest() {
	if os.Getenv(guest.ServeEnv) != "" {
		// Not for conmon, runc or the processes of cells.
		_ = os.Unsetenv(guest.ServeEnv)
		if err := runGuestServer(); err != nil {
			slog.Error("guest auraed failed", "error", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	if os.Getpid() == 1 || (len(os.Args) > 1 && os.Args[1] == "--guest") {
		guest.RunInit()
		os.Exit(0)
	}
}

// runGuestServer serves the Aurae API over the guest's virtio-serial port
// (or vsock, when the kernel command line asks and the guest has it).
func runGuestServer() error {
	cfg, err := guest.ReadConfig()
	logs := observe.NewLogBroadcaster(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: cfg.LogLevel}))
	logger := slog.New(logs)
	slog.SetDefault(logger)
	if err != nil {
		logger.Warn("kernel command line", "error", err)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	lis, err := guestListener(cfg, logger)
	if err != nil {
		return err
	}
	d, err := daemon.New(ctx, daemon.Config{
		StateDir:        "/var/lib/aurae",
		CgroupRoot:      "aurae",
		StopGracePeriod: 10 * time.Second,
		Logger:          logger,
		Logs:            logs,
	})
	if err != nil {
		_ = lis.Close()
		return err
	}
	defer func() {
		if err := d.Close(); err != nil {
			logger.Error("close services", "error", err)
		}
	}()
	s := server.New(logger)
	d.Register(s)
	serveErr := make(chan error, 1)
	go func() { serveErr <- s.Serve(lis) }()
	logger.Info("guest auraed serving", "version", version.Version, "pid", os.Getpid(),
		"transport", lis.Addr().Network(), "address", lis.Addr().String())

	var runErr error
	select {
	case <-ctx.Done():
		logger.Info("guest auraed shutting down", "reason", "signal")
	case err := <-serveErr:
		if !errors.Is(err, grpc.ErrServerStopped) {
			runErr = fmt.Errorf("serve: %w", err)
		}
	}
	stop()
	server.Shutdown(logger, shutdownGrace, s)
	return runErr
}

func guestListener(cfg guest.Config, logger *slog.Logger) (net.Listener, error) {
	if cfg.Transport == guest.TransportVsock {
		if _, err := os.Stat("/dev/vsock"); err == nil {
			return guest.ListenVsock(cfg.VsockPort)
		}
		logger.Warn("aurae.transport=vsock but the guest has no /dev/vsock; serving on the virtio-serial port", "port", cfg.Port)
	}
	return guest.ListenPort(cfg.Port, logger)
}
