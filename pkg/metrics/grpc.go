package metrics

import (
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
)

// GRPC holds the per-method metrics of a gRPC server: requests, errors by
// code, latency and calls in flight. The labels are the service and method
// of the call (a fixed set: gRPC answers Unimplemented to unknown methods
// before any interceptor runs).
type GRPC struct {
	requests *prometheus.CounterVec
	errors   *prometheus.CounterVec
	latency  *prometheus.HistogramVec
	inFlight *prometheus.GaugeVec
}

// NewGRPC makes the gRPC metrics of namespace and registers them on reg.
func NewGRPC(reg prometheus.Registerer, namespace string) *GRPC {
	labels := []string{"service", "method"}
	g := &GRPC{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Subsystem: "grpc", Name: "requests_total",
			Help: "gRPC calls served, by service and method (counted when they end).",
		}, labels),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Subsystem: "grpc", Name: "errors_total",
			Help: "gRPC calls that ended with a status other than OK, by service, method and code.",
		}, append(labels, "code")),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Subsystem: "grpc", Name: "request_duration_seconds",
			Help:    "Time from the start of a gRPC call to its end (for a stream, until it closes), by service and method.",
			Buckets: LatencyBuckets,
		}, labels),
		inFlight: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: namespace, Subsystem: "grpc", Name: "requests_in_flight",
			Help: "gRPC calls being served now, by service and method.",
		}, labels),
	}
	reg.MustRegister(g.requests, g.errors, g.latency, g.inFlight)
	return g
}

// Begin records the start of a call to fullMethod ("/pkg.Service/Method")
// and returns what records its end with the call's status code. A nil GRPC
// records nothing.
func (g *GRPC) Begin(fullMethod string) func(codes.Code) {
	if g == nil {
		return func(codes.Code) {}
	}
	service, method := SplitMethod(fullMethod)
	start := time.Now()
	inFlight := g.inFlight.WithLabelValues(service, method)
	inFlight.Inc()
	return func(code codes.Code) {
		inFlight.Dec()
		g.latency.WithLabelValues(service, method).Observe(time.Since(start).Seconds())
		g.requests.WithLabelValues(service, method).Inc()
		if code != codes.OK {
			g.errors.WithLabelValues(service, method, code.String()).Inc()
		}
	}
}

// SplitMethod splits a gRPC full method name into its service and method.
func SplitMethod(fullMethod string) (service, method string) {
	s := strings.TrimPrefix(fullMethod, "/")
	if i := strings.LastIndexByte(s, '/'); i >= 0 {
		return s[:i], s[i+1:]
	}
	return "unknown", s
}
