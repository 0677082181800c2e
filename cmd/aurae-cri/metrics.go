package main

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/aurae-runtime/aurae-cri/pkg/metrics"
)

// observability is what feeds /metrics when --metrics-address is set: the
// registry, the CRI's and the embedded auraed's gRPC metrics, and the CRI's
// events. All nil when it is not (nothing is counted).
type observability struct {
	reg        *prometheus.Registry
	criGRPC    *metrics.GRPC
	auraedGRPC *metrics.GRPC
	cri        *metrics.CRI
}

func newObservability(cfg config) observability {
	if cfg.MetricsAddress == "" {
		return observability{}
	}
	reg := metrics.NewRegistry()
	return observability{
		reg:        reg,
		criGRPC:    metrics.NewGRPC(reg, metrics.CRINamespace),
		auraedGRPC: metrics.NewGRPC(reg, metrics.AuraedNamespace),
		cri:        metrics.NewCRI(reg),
	}
}
