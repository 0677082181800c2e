package guest

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

	guestv0 "github.com/aurae-runtime/aurae-cri/api/guest/v0"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/daemon"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/observe"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/server"
	"github.com/aurae-runtime/aurae-cri/pkg/version"
)

// Runtime is the OCI runtime of the guest's pods: Debian's crun (the
// guest image's, hack/vm-image/build.sh), not the host's pinned runc. Under
// TCG a runc create + start is three starts of a 15 MB Go binary, most of a
// container's start; crun is C. A container escape inside the guest is
// assumed by the threat model (the VM is the pod's boundary), so the
// guest may run Debian's crun where the host insists on a current runc.
const Runtime = "/usr/bin/crun"

// serveShutdownGrace bounds the serving auraed's GracefulStop, as auraed's
// on the host; it is within serverGrace, the init's wait for it to exit.
const serveShutdownGrace = 5 * time.Second

// RunServer is the guest's serving auraed role: the life of this binary
// when the guest init (RunInit) started it with ServeEnv set. It serves the
// Aurae API over the guest's virtio-serial port (or vsock, when the kernel
// command line asks and the guest has it) until SIGTERM; it never returns.
// Only roles.Run calls it, and only in auraed.
func RunServer() {
	// Not for conmon, runc or the processes of cells.
	_ = os.Unsetenv(ServeEnv)
	if err := serve(); err != nil {
		slog.Error("guest auraed failed", "error", err)
		os.Exit(1)
	}
	os.Exit(0)
}

func serve() error {
	cfg, err := ReadConfig()
	logs := observe.NewLogBroadcaster(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: cfg.LogLevel}))
	logger := slog.New(logs)
	slog.SetDefault(logger)
	if err != nil {
		logger.Warn("kernel command line", "error", err)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	lis, err := listener(cfg, logger)
	if err != nil {
		return err
	}
	d, err := daemon.New(ctx, daemon.Config{
		StateDir:        "/var/lib/aurae",
		CgroupRoot:      "aurae",
		StopGracePeriod: 10 * time.Second,
		OCIRuntime:      Runtime,
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
	guestv0.RegisterGuestServiceServer(s, NewConfigureService(logger))
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
	server.Shutdown(logger, serveShutdownGrace, s)
	return runErr
}

// listener is the port the serving auraed answers on: vsock when asked for
// and present, the virtio-serial port otherwise.
func listener(cfg Config, logger *slog.Logger) (net.Listener, error) {
	if cfg.Transport == TransportVsock {
		if _, err := os.Stat("/dev/vsock"); err == nil {
			return ListenVsock(cfg.VsockPort)
		}
		logger.Warn("aurae.transport=vsock but the guest has no /dev/vsock; serving on the virtio-serial port", "port", cfg.Port)
	}
	return ListenPort(cfg.Port, logger)
}
