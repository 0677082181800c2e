// Package client connects to auraed and exposes the Aurae API's generated
// clients over one gRPC connection.
package client

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	cellsv0 "github.com/aurae-runtime/aurae-cri/api/cells/v0"
	discoveryv0 "github.com/aurae-runtime/aurae-cri/api/discovery/v0"
	observev0 "github.com/aurae-runtime/aurae-cri/api/observe/v0"
	osapi "github.com/aurae-runtime/aurae-cri/api/os"
	podsv0 "github.com/aurae-runtime/aurae-cri/api/pods/v0"
	vmsv0 "github.com/aurae-runtime/aurae-cri/api/vms/v0"
	"github.com/aurae-runtime/aurae-cri/pkg/tracing"
)

// Client is a connection to auraed with a client per Aurae service.
type Client struct {
	// Conn is the underlying connection, for services not listed here.
	Conn *grpc.ClientConn

	Cells     cellsv0.CellServiceClient
	Discovery discoveryv0.DiscoveryServiceClient
	Observe   observev0.ObserveServiceClient
	Pods      podsv0.PodServiceClient
	Vms       vmsv0.VmServiceClient
	// OS is the node service (os.OSService); WithNodes sends a call to
	// several nodes.
	OS osapi.OSServiceClient
}

// WithNodes names the nodes an os.OSService call is for (the gRPC metadata
// "nodes"): the auraed called answers for each of them, itself and its
// peers, one message per node.
func WithNodes(ctx context.Context, nodes ...string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "nodes", strings.Join(nodes, ","))
}

// reconnectBackoff paces the attempts to reconnect to auraed.
var reconnectBackoff = backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 2 * time.Second}

// Option configures Dial.
type Option func(*options)

// MaxRecvMsgSize is the largest reply the client reads: auraed's largest,
// an ExecSync with stdout and stderr both at auraed's cap of 16 MiB, plus
// room for the rest of the message (server.MaxSendMsgSize on auraed's side).
const MaxRecvMsgSize = 2*(16<<20) + 1<<20

type options struct {
	certFile, keyFile, caFile string
	dialOpts                  []grpc.DialOption
}

// WithTLS connects with mutual TLS: the client presents certFile/keyFile and
// trusts servers whose certificate is signed by a CA of caFile (PEM).
// Required for tcp:// addresses.
func WithTLS(certFile, keyFile, caFile string) Option {
	return func(o *options) { o.certFile, o.keyFile, o.caFile = certFile, keyFile, caFile }
}

// WithDialOptions adds gRPC dial options (interceptors, message limits).
func WithDialOptions(opts ...grpc.DialOption) Option {
	return func(o *options) { o.dialOpts = append(o.dialOpts, opts...) }
}

// ErrTCPWithoutTLS is returned by Dial for a tcp:// address without WithTLS.
var ErrTCPWithoutTLS = errors.New("tcp addresses need mutual TLS: pass WithTLS(cert, key, ca)")

// Dial connects to auraed at address, "unix:///path/to/aurae.sock" (or just
// the absolute path) or "tcp://host:port" (which requires WithTLS), and
// waits until the connection is ready, it fails, or ctx ends. Once Dial
// returned, gRPC reconnects by itself whenever the connection drops.
func Dial(ctx context.Context, address string, opts ...Option) (*Client, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	network, target, err := parseAddress(address)
	if err != nil {
		return nil, err
	}
	creds := insecure.NewCredentials()
	if o.certFile != "" || o.keyFile != "" || o.caFile != "" {
		cfg, err := clientTLSConfig(o.certFile, o.keyFile, o.caFile)
		if err != nil {
			return nil, err
		}
		creds = credentials.NewTLS(cfg)
	} else if network == "tcp" {
		return nil, fmt.Errorf("dial %s: %w", address, ErrTCPWithoutTLS)
	}

	var last lastError
	dialer := func(ctx context.Context, addr string) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, network, addr)
		last.set(err)
		return c, err
	}
	dialOpts := append([]grpc.DialOption{
		grpc.WithContextDialer(dialer),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(MaxRecvMsgSize)),
		// Errors keep their kind across the wire: auraed maps errdefs to
		// codes, and these map them back.
		grpc.WithChainUnaryInterceptor(unaryErrors),
		grpc.WithChainStreamInterceptor(streamErrors),
		grpc.WithTransportCredentials(&recordingCreds{TransportCredentials: creds, last: &last}),
		// Back within seconds of an auraed restart: gRPC's default backoff
		// grows to two minutes between attempts, all of them failing every
		// call at once (Unavailable).
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: reconnectBackoff, MinConnectTimeout: 5 * time.Second}),
	}, o.dialOpts...)
	// A span per call when exporting, and the trace context to auraed
	// (pkg/tracing).
	dialOpts = append(dialOpts, tracing.DialOptions()...)
	if network == "unix" {
		// The socket path is no host name; TLS over a unix socket then
		// verifies the server certificate against "localhost".
		dialOpts = append(dialOpts, grpc.WithAuthority("localhost"))
	}
	conn, err := grpc.NewClient("passthrough:///"+target, dialOpts...)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", address, err)
	}
	if err := waitReady(ctx, conn, &last); err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("connect to %s: %w", address, err)
	}
	return &Client{
		Conn:      conn,
		Cells:     cellsv0.NewCellServiceClient(conn),
		Discovery: discoveryv0.NewDiscoveryServiceClient(conn),
		Observe:   observev0.NewObserveServiceClient(conn),
		Pods:      podsv0.NewPodServiceClient(conn),
		Vms:       vmsv0.NewVmServiceClient(conn),
		OS:        osapi.NewOSServiceClient(conn),
	}, nil
}

// Close closes the connection.
func (c *Client) Close() error {
	return c.Conn.Close()
}

// parseAddress splits an auraed address into a net.Dial network and address.
func parseAddress(address string) (network, addr string, err error) {
	switch {
	case strings.HasPrefix(address, "unix://"):
		addr = strings.TrimPrefix(address, "unix://")
		if !strings.HasPrefix(addr, "/") {
			return "", "", fmt.Errorf("address %q: unix socket path must be absolute (unix:///path)", address)
		}
		return "unix", addr, nil
	case strings.HasPrefix(address, "/"):
		return "unix", address, nil
	case strings.HasPrefix(address, "tcp://"):
		addr = strings.TrimPrefix(address, "tcp://")
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return "", "", fmt.Errorf("address %q: %w", address, err)
		}
		return "tcp", addr, nil
	default:
		return "", "", fmt.Errorf("address %q: want unix:///path or tcp://host:port", address)
	}
}

func clientTLSConfig(certFile, keyFile, caFile string) (*tls.Config, error) {
	if certFile == "" || keyFile == "" || caFile == "" {
		return nil, errors.New("TLS needs a client certificate, its key and a CA bundle")
	}
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("load client certificate %s and key %s: %w", certFile, keyFile, err)
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("read CA bundle: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("CA bundle %s: no PEM certificate found", caFile)
	}
	return &tls.Config{
		Certificates: []tls.Certificate{pair},
		RootCAs:      pool,
		MinVersion:   tls.VersionTLS13,
	}, nil
}

// waitReady connects conn and waits until it is ready, failed, or ctx ended.
func waitReady(ctx context.Context, conn *grpc.ClientConn, last *lastError) error {
	conn.Connect()
	for {
		s := conn.GetState()
		switch s {
		case connectivity.Ready:
			return nil
		case connectivity.TransientFailure:
			if err := last.get(); err != nil {
				return err
			}
			return errors.New("connection failed")
		case connectivity.Shutdown:
			return errors.New("connection closed")
		}
		if !conn.WaitForStateChange(ctx, s) {
			if err := last.get(); err != nil {
				return fmt.Errorf("%w (last error: %w)", ctx.Err(), err)
			}
			return ctx.Err()
		}
	}
}

// lastError remembers the latest dial or handshake error, for Dial's message.
type lastError struct {
	mu  sync.Mutex
	err error
}

func (l *lastError) set(err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.err = err
}

func (l *lastError) get() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.err
}

// recordingCreds records handshake errors in last.
type recordingCreds struct {
	credentials.TransportCredentials
	last *lastError
}

func (r *recordingCreds) ClientHandshake(ctx context.Context, authority string, conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	c, info, err := r.TransportCredentials.ClientHandshake(ctx, authority, conn)
	if err != nil {
		r.last.set(fmt.Errorf("handshake: %w", err))
	}
	return c, info, err
}

func (r *recordingCreds) Clone() credentials.TransportCredentials {
	return &recordingCreds{TransportCredentials: r.TransportCredentials.Clone(), last: r.last}
}
