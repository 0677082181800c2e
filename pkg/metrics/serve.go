package metrics

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// ErrNotLoopback refuses a metrics address that is not a loopback one when
// the endpoint would serve without TLS.
var ErrNotLoopback = errors.New("metrics are served in plain HTTP only on a loopback address (127.0.0.1, [::1], localhost); give a loopback address or configure mutual TLS")

// CheckAddress tells whether addr (host:port) may be served: any address
// with TLS, only a loopback one without. An empty host means every
// interface, which is not loopback.
func CheckAddress(addr string, withTLS bool) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("metrics address %q: %w", addr, err)
	}
	if withTLS || host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return nil
	}
	return fmt.Errorf("metrics address %q: %w", addr, ErrNotLoopback)
}

// Server serves /metrics of a registry over HTTP (or HTTPS with mutual TLS).
type Server struct {
	srv *http.Server
	lis net.Listener
}

// Serve listens on addr and serves reg's metrics at /metrics, with tlsCfg
// when it is not nil (plain HTTP is allowed on loopback addresses only:
// CheckAddress, and the address actually bound is checked again).
func Serve(addr string, tlsCfg *tls.Config, reg *prometheus.Registry, logger *slog.Logger) (*Server, error) {
	if err := CheckAddress(addr, tlsCfg != nil); err != nil {
		return nil, err
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics: listen on %s: %w", addr, err)
	}
	if tcp, ok := lis.Addr().(*net.TCPAddr); tlsCfg == nil && (!ok || !tcp.IP.IsLoopback()) {
		_ = lis.Close()
		return nil, fmt.Errorf("metrics address %q resolved to %s: %w", addr, lis.Addr(), ErrNotLoopback)
	}
	if tlsCfg != nil {
		lis = tls.NewListener(lis, tlsCfg)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog:      slogErrors{logger},
		ErrorHandling: promhttp.ContinueOnError,
		// A scrape never waits on a slow collector for long.
		Timeout: 30 * time.Second,
	}))
	s := &Server{
		srv: &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(logger.Handler(), slog.LevelDebug)},
		lis: lis,
	}
	go func() {
		if err := s.srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			logger.Error("metrics endpoint stopped serving", "error", err)
		}
	}()
	logger.Info("serving metrics", "address", lis.Addr().String(), "tls", tlsCfg != nil)
	return s, nil
}

// Addr is the address served (the port chosen for ":0").
func (s *Server) Addr() net.Addr { return s.lis.Addr() }

// Close stops serving, letting scrapes in flight finish for a short while.
func (s *Server) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := s.srv.Shutdown(ctx); err != nil {
		return s.srv.Close()
	}
	return nil
}

// slogErrors is promhttp's error log on slog.
type slogErrors struct{ logger *slog.Logger }

func (l slogErrors) Println(v ...any) { l.logger.Warn("metrics gathering", "error", fmt.Sprint(v...)) }
