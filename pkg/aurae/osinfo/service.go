// Package osinfo serves os.OSService, the node service in the style of
// Talos': the containers auraed (or the node's CRI runtime) runs, the
// kernel log, memory, processes, container restart and stats. Each answer
// holds one message per node; a call whose gRPC metadata names `nodes` is
// run on each of them, forwarded to the peers over mutual TLS (nodes.go).
package osinfo

import (
	"context"
	"log/slog"
	"os"
	"time"

	"google.golang.org/protobuf/types/known/emptypb"

	cellsv0 "github.com/aurae-runtime/aurae-cri/api/cells/v0"
	commonapi "github.com/aurae-runtime/aurae-cri/api/common"
	osapi "github.com/aurae-runtime/aurae-cri/api/os"
	podsv0 "github.com/aurae-runtime/aurae-cri/api/pods/v0"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/cgroup"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/pods"
)

// Pods is what the node service needs of the PodService.
type Pods interface {
	Containers() []pods.ContainerInfo
	ContainerStats(context.Context, *podsv0.ContainerStatsRequest) (*podsv0.ContainerStatsResponse, error)
	Restart(ctx context.Context, id string, grace time.Duration) (*podsv0.ContainerStatus, error)
}

// Cells is what the node service needs of the CellService.
type Cells interface {
	List(context.Context, *cellsv0.CellServiceListRequest) (*cellsv0.CellServiceListResponse, error)
	// Usage is the figures of a cell's cgroup (NotFound for a cell that is
	// gone).
	Usage(ctx context.Context, cell string) (cgroup.Usage, error)
}

// Config configures the service.
type Config struct {
	// NodeName is this node's name in `nodes` and in metadata.hostname
	// (default: the host name).
	NodeName string
	Pods     Pods
	Cells    Cells
	// CRIEndpoint is the node's CRI runtime (unix:///run/aurae/cri.sock),
	// for driver CRI; empty: driver CRI is refused (FailedPrecondition).
	CRIEndpoint string
	// Peers maps a node name to its auraed's TCP address (host:port).
	Peers map[string]string
	// PeerCert, PeerKey and PeerCA: the client certificate auraed presents
	// to its peers and the CA their server certificates chain to.
	PeerCert, PeerKey, PeerCA string
	// NodeTimeout bounds each node's part of a unary call (default 30 s).
	NodeTimeout time.Duration
	// StopGracePeriod is Restart's time between SIGTERM and SIGKILL.
	StopGracePeriod time.Duration
	Logger          *slog.Logger
}

// Service implements osapi.OSServiceServer.
type Service struct {
	osapi.UnimplementedOSServiceServer
	cfg   Config
	log   *slog.Logger
	peers peers
}

var _ osapi.OSServiceServer = (*Service)(nil)

// New returns the service.
func New(cfg Config) *Service {
	if cfg.NodeName == "" {
		cfg.NodeName, _ = os.Hostname()
	}
	if cfg.NodeTimeout <= 0 {
		cfg.NodeTimeout = 30 * time.Second
	}
	if cfg.StopGracePeriod <= 0 {
		cfg.StopGracePeriod = 10 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Service{cfg: cfg, log: cfg.Logger}
}

// Containers implements OSService.Containers.
func (s *Service) Containers(ctx context.Context, req *osapi.ContainersRequest) (*osapi.ContainersResponse, error) {
	return fanOut(ctx, s, req, s.containers, osapi.OSServiceClient.Containers)
}

// Memory implements OSService.Memory.
func (s *Service) Memory(ctx context.Context, req *emptypb.Empty) (*osapi.MemoryResponse, error) {
	return fanOut(ctx, s, req, s.memory, osapi.OSServiceClient.Memory)
}

// Processes implements OSService.Processes.
func (s *Service) Processes(ctx context.Context, req *emptypb.Empty) (*osapi.ProcessesResponse, error) {
	return fanOut(ctx, s, req, s.processes, osapi.OSServiceClient.Processes)
}

// Restart implements OSService.Restart.
func (s *Service) Restart(ctx context.Context, req *osapi.RestartRequest) (*osapi.RestartResponse, error) {
	return fanOut(ctx, s, req, s.restart, osapi.OSServiceClient.Restart)
}

// Stats implements OSService.Stats.
func (s *Service) Stats(ctx context.Context, req *osapi.StatsRequest) (*osapi.StatsResponse, error) {
	return fanOut(ctx, s, req, s.stats, osapi.OSServiceClient.Stats)
}

// Dmesg implements OSService.Dmesg.
func (s *Service) Dmesg(req *osapi.DmesgRequest, ss osapi.OSService_DmesgServer) error {
	return s.fanOutDmesg(req, ss)
}

// meta is the metadata of this node's own answer.
func (s *Service) meta() *commonapi.Metadata {
	return &commonapi.Metadata{Hostname: s.cfg.NodeName}
}
