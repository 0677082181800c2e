// Package image is aurae-cri's CRI ImageService. Images are pulled, unpacked
// and stored by containerd, in a containerd namespace of their own, following
// the rules of containerd's CRI plugin: an image's id is the digest of its
// config, each image has a record named by its id, its repo digest and its
// repo tags, and refs are normalized the way docker does (busybox is
// docker.io/library/busybox:latest).
//
// Besides the CRI RPCs, Service gives the container code what it needs of an
// image: its config (Resolve) and a writable overlay rootfs snapshot per
// container (PrepareRootfs, RemoveRootfs).
package image

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	clog "github.com/containerd/log"
	"github.com/containerd/platforms"
	"google.golang.org/grpc"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/internal/timing"
	"github.com/aurae-runtime/aurae-cri/pkg/metrics"
)

// Defaults for the zero values of Options.
const (
	DefaultNamespace   = "aurae"
	DefaultSnapshotter = "overlayfs"
	// DefaultPullTimeout bounds one PullImage (the kubelet sets no deadline).
	DefaultPullTimeout = 30 * time.Minute
	// DefaultCallTimeout bounds every other call; the kubelet gives up on a
	// runtime call after 2 minutes.
	DefaultCallTimeout = time.Minute
)

// Labels this package sets on containerd objects.
const (
	// LabelManaged marks image records created by aurae-cri.
	LabelManaged = "io.aurae.cri.image"
	// LabelContainerID names the container a rootfs snapshot or lease is for.
	LabelContainerID = "io.aurae.cri.container-id"
)

// Options configure a Service.
type Options struct {
	// Client is the containerd client to use. When nil, New dials Address
	// and Close closes that connection.
	Client *containerd.Client
	// Address of containerd, used when Client is nil.
	Address string
	// Namespace is the containerd namespace holding images and snapshots.
	Namespace string
	// Snapshotter unpacks images and holds rootfs snapshots.
	Snapshotter string
	// RegistryConfigDir is a directory in containerd's hosts.toml layout
	// (<dir>/<host[:port]>/hosts.toml, <dir>/_default/hosts.toml) giving
	// mirrors, TLS, plain-HTTP endpoints and headers per registry. Empty
	// means the defaults: HTTPS, plain HTTP for loopback registries.
	RegistryConfigDir string
	// PullTimeout bounds a PullImage; CallTimeout every other call.
	PullTimeout time.Duration
	CallTimeout time.Duration
	// Logger receives the service's logs (slog.Default when nil).
	Logger *slog.Logger
	// Metrics counts the pulls; nil counts nothing.
	Metrics *metrics.CRI
}

// Service implements runtimeapi.ImageServiceServer on containerd.
type Service struct {
	runtimeapi.UnsafeImageServiceServer

	client     *containerd.Client
	ownsClient bool
	// puller is client, on its connection, with the content store pulls
	// write through (pullContentStore).
	puller      *containerd.Client
	namespace   string
	snapshotter string
	hostsDir    string
	pullTO      time.Duration
	callTO      time.Duration
	logger      *slog.Logger
	metrics     *metrics.CRI
	platform    platforms.MatchComparer

	// snapshotRoot is the snapshotter's directory, reported by ImageFsInfo.
	snapshotRoot string
	// clog carries containerd's client logs to logger.
	clog *clog.Entry

	pulls keyedMutex

	// metaMu guards meta: what was read of each image target from the
	// content store. Content is addressed by digest, so entries never go
	// stale; List drops those whose target is gone.
	metaMu sync.Mutex
	meta   map[string]imageMeta

	// usageMu guards usage: the usage of committed snapshots, which never
	// changes.
	usageMu sync.Mutex
	usage   map[string]snapshotUsage

	// idx mirrors the namespace's image records, kept current by watch
	// until stopWatch is called; watchDone closes when it has returned.
	idx       *index
	stopWatch context.CancelFunc
	watchDone chan struct{}

	// leasesMu guards leasedRootfs: the containers whose rootfs is still
	// held by a lease of an earlier version (migrateRootfsLeases).
	leasesMu     sync.Mutex
	leasedRootfs map[string]struct{}

	// dropsMu guards drops: the pull leases being deleted off their pulls'
	// paths (pullLease.release), each closed when done.
	dropsMu sync.Mutex
	drops   map[*pullLease]chan struct{}
	// beforeLeaseDrop, when set (tests), runs before a pull lease's
	// deletion.
	beforeLeaseDrop func()
}

var _ runtimeapi.ImageServiceServer = (*Service)(nil)

// New connects to containerd and checks that it answers and has the
// snapshotter.
func New(ctx context.Context, opts Options) (*Service, error) {
	s := &Service{
		client:       opts.Client,
		namespace:    opts.Namespace,
		snapshotter:  opts.Snapshotter,
		hostsDir:     opts.RegistryConfigDir,
		pullTO:       opts.PullTimeout,
		callTO:       opts.CallTimeout,
		logger:       opts.Logger,
		metrics:      opts.Metrics,
		platform:     platforms.Default(),
		meta:         map[string]imageMeta{},
		usage:        map[string]snapshotUsage{},
		idx:          newIndex(),
		watchDone:    make(chan struct{}),
		leasedRootfs: map[string]struct{}{},
		drops:        map[*pullLease]chan struct{}{},
	}
	if s.namespace == "" {
		s.namespace = DefaultNamespace
	}
	if s.snapshotter == "" {
		s.snapshotter = DefaultSnapshotter
	}
	if s.pullTO <= 0 {
		s.pullTO = DefaultPullTimeout
	}
	if s.callTO <= 0 {
		s.callTO = DefaultCallTimeout
	}
	if s.logger == nil {
		s.logger = slog.Default()
	}
	s.logger = s.logger.With("component", "image", "namespace", s.namespace)
	s.clog = containerdLogger(s.logger)
	if s.client == nil {
		if opts.Address == "" {
			return nil, fmt.Errorf("image service: no containerd client or address: %w", errdefs.ErrInvalidArgument)
		}
		c, err := containerd.New(opts.Address, containerd.WithDefaultNamespace(s.namespace),
			containerd.WithExtraDialOpts([]grpc.DialOption{
				grpc.WithChainUnaryInterceptor(timeUnary), grpc.WithChainStreamInterceptor(timeStream),
			}))
		if err != nil {
			return nil, fmt.Errorf("connect to containerd at %q: %w", opts.Address, err)
		}
		s.client, s.ownsClient = c, true
	}
	ctx, cancel := s.callCtx(ctx)
	defer cancel()
	root, err := s.lookupSnapshotRoot(ctx)
	if err != nil {
		_ = s.Close()
		return nil, err
	}
	s.snapshotRoot = root
	s.puller = s.newPuller()
	s.migrateRootfsLeases(s.withNamespace(ctx))
	// The watcher outlives New's ctx: it ends with Close.
	wctx, stop := context.WithCancel(s.withNamespace(context.WithoutCancel(ctx)))
	s.stopWatch = stop
	go s.watch(wctx)
	return s, nil
}

// newPuller returns s.client with the content store pulls write through,
// on s.client's connection (closed with it, never by itself); s.client
// itself when it has no connection of its own.
func (s *Service) newPuller() *containerd.Client {
	conn, ok := s.client.Conn().(*grpc.ClientConn)
	if !ok || conn == nil {
		return s.client
	}
	p, err := containerd.NewWithConn(conn, containerd.WithDefaultNamespace(s.namespace),
		containerd.WithServices(containerd.WithContentStore(pullContentStore{s.client.ContentStore()})))
	if err != nil {
		return s.client
	}
	return p
}

// Close stops the image watcher and closes the containerd connection if
// New opened it.
func (s *Service) Close() error {
	s.awaitLeaseDrops()
	if s.stopWatch != nil {
		s.stopWatch()
		<-s.watchDone
		s.stopWatch = nil
	}
	if s.ownsClient {
		return s.client.Close()
	}
	return nil
}

// Namespace is the containerd namespace of the images.
func (s *Service) Namespace() string { return s.namespace }

// Snapshotter is the name of the snapshotter images are unpacked into.
func (s *Service) Snapshotter() string { return s.snapshotter }

// SnapshotRoot is the snapshotter's directory on the host.
func (s *Service) SnapshotRoot() string { return s.snapshotRoot }

// callCtx bounds a call and puts it in the service's namespace.
func (s *Service) callCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(ctx, s.callTO)
	return s.withNamespace(ctx), cancel
}

// withNamespace puts ctx in the service's containerd namespace, with
// containerd's logs going to the service's logger.
func (s *Service) withNamespace(ctx context.Context) context.Context {
	return clog.WithLogger(namespaces.WithNamespace(ctx, s.namespace), s.clog)
}

// lookupSnapshotRoot asks containerd where the snapshotter keeps its files
// (snapshotter plugins export "root").
func (s *Service) lookupSnapshotRoot(ctx context.Context) (string, error) {
	resp, err := s.client.IntrospectionService().Plugins(ctx, "type==io.containerd.snapshotter.v1,id=="+s.snapshotter)
	if err != nil {
		return "", fmt.Errorf("list containerd snapshotters: %w", err)
	}
	for _, p := range resp.GetPlugins() {
		if p.GetID() != s.snapshotter {
			continue
		}
		if p.GetInitErr() != nil {
			return "", fmt.Errorf("containerd snapshotter %q failed to load: %s: %w", s.snapshotter, p.GetInitErr().GetMessage(), errdefs.ErrFailedPrecondition)
		}
		return p.GetExports()["root"], nil
	}
	return "", fmt.Errorf("containerd has no snapshotter %q: %w", s.snapshotter, errdefs.ErrFailedPrecondition)
}

// keyedMutex serializes work on one key (a pull of one ref) with waits that
// end with their context.
type keyedMutex struct {
	mu    sync.Mutex
	locks map[string]*keyLock
}

type keyLock struct {
	ch   chan struct{}
	refs int
}

func (k *keyedMutex) lock(ctx context.Context, key string) (func(), error) {
	k.mu.Lock()
	if k.locks == nil {
		k.locks = map[string]*keyLock{}
	}
	l, ok := k.locks[key]
	if !ok {
		l = &keyLock{ch: make(chan struct{}, 1)}
		k.locks[key] = l
	}
	l.refs++
	k.mu.Unlock()

	release := func() {
		k.mu.Lock()
		l.refs--
		if l.refs == 0 {
			delete(k.locks, key)
		}
		k.mu.Unlock()
	}
	select {
	case l.ch <- struct{}{}:
		return func() { <-l.ch; release() }, nil
	case <-ctx.Done():
		release()
		return nil, ctx.Err()
	}
}

// timeUnary and timeStream add each containerd call's time to the Calls of
// its context (timing.WithCalls), for the debug line of the CRI call that
// made it.
func timeUnary(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	calls := timing.CallsFrom(ctx)
	if calls == nil {
		return invoker(ctx, method, req, reply, cc, opts...)
	}
	t0 := time.Now()
	err := invoker(ctx, method, req, reply, cc, opts...)
	calls.Add(method, time.Since(t0))
	return err
}

// timeStream counts a stream's opening only.
func timeStream(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	calls := timing.CallsFrom(ctx)
	if calls == nil {
		return streamer(ctx, desc, cc, method, opts...)
	}
	t0 := time.Now()
	st, err := streamer(ctx, desc, cc, method, opts...)
	calls.Add(method, time.Since(t0))
	return st, err
}
