package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Exit reasons counted by aurae_cri_container_exits_total; any other
// reason a runtime gives is counted as "Other" (bounded labels).
var exitReasons = map[string]bool{"Completed": true, "Error": true, "OOMKilled": true, "StartError": true, "Unknown": true, "ContainerCannotRun": true}

// CRI holds the metrics of the events aurae-cri's operators alert on. Its
// methods do nothing on a nil CRI, so that packages need no check.
type CRI struct {
	exits          *prometheus.CounterVec
	oomKills       prometheus.Counter
	pulls          *prometheus.CounterVec
	pullBytes      prometheus.Counter
	pullDuration   prometheus.Histogram
	cniFailures    *prometheus.CounterVec
	recoverySecs   prometheus.Gauge
	recovered      *prometheus.GaugeVec
	markedUnknown  prometheus.Counter
	auraeReconnect prometheus.Counter
	guestReconnect prometheus.Counter
}

// NewCRI makes aurae-cri's event metrics and registers them on reg.
func NewCRI(reg prometheus.Registerer) *CRI {
	ns := CRINamespace
	m := &CRI{
		exits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "container_exits_total",
			Help: "Container exits recorded, by runtime handler and reason (Completed, Error, OOMKilled, StartError, Unknown, Other).",
		}, []string{"runtime_handler", "reason"}),
		oomKills: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Name: "container_oom_kills_total",
			Help: "Containers that exited killed by the OOM killer (reason OOMKilled).",
		}),
		pulls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "image_pulls_total",
			Help: "Image pulls, by result (success or failure).",
		}, []string{"result"}),
		pullBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Name: "image_pull_bytes_total",
			Help: "Size (compressed content, in bytes) of the images pulled successfully.",
		}),
		pullDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: ns, Name: "image_pull_duration_seconds",
			Help:    "Time an image pull took, waiting for another pull of the same image included, successful or not.",
			Buckets: []float64{0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200},
		}),
		cniFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "cni_failures_total",
			Help: "CNI calls that failed, by operation (setup or teardown).",
		}, []string{"operation"}),
		recoverySecs: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Name: "recovery_duration_seconds",
			Help: "Time the last recovery at start took (the CRI answers Unavailable until it is done).",
		}),
		recovered: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: ns, Name: "recovered_objects",
			Help: "Objects found in the state by the last recovery at start, by kind (pod or container).",
		}, []string{"kind"}),
		markedUnknown: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Name: "containers_marked_unknown_total",
			Help: "Running containers marked UNKNOWN by a recovery because their runtime could not tell their state.",
		}),
		auraeReconnect: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Name: "aurae_reconnects_total",
			Help: "Times the connection to auraed became ready again after it had been ready before.",
		}),
		guestReconnect: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Name: "vm_guest_reconnects_total",
			Help: "Times the connection to a VM pod's guest auraed became ready again after it had been ready before.",
		}),
	}
	reg.MustRegister(m.exits, m.oomKills, m.pulls, m.pullBytes, m.pullDuration, m.cniFailures,
		m.recoverySecs, m.recovered, m.markedUnknown, m.auraeReconnect, m.guestReconnect)
	for _, r := range []string{"success", "failure"} {
		m.pulls.WithLabelValues(r)
	}
	for _, op := range []string{"setup", "teardown"} {
		m.cniFailures.WithLabelValues(op)
	}
	return m
}

// ContainerExited counts an exit of a container of runtimeHandler, and an
// OOM kill when reason is OOMKilled.
func (m *CRI) ContainerExited(runtimeHandler, reason string) {
	if m == nil {
		return
	}
	if !exitReasons[reason] {
		reason = "Other"
	}
	m.exits.WithLabelValues(runtimeHandler, reason).Inc()
	if reason == "OOMKilled" {
		m.oomKills.Inc()
	}
}

// ImagePulled counts a pull that took seconds; bytes is the image's size
// when it succeeded (failed false).
func (m *CRI) ImagePulled(seconds float64, bytes int64, failed bool) {
	if m == nil {
		return
	}
	m.pullDuration.Observe(seconds)
	if failed {
		m.pulls.WithLabelValues("failure").Inc()
		return
	}
	m.pulls.WithLabelValues("success").Inc()
	if bytes > 0 {
		m.pullBytes.Add(float64(bytes))
	}
}

// CNIFailed counts a failed CNI operation ("setup" or "teardown").
func (m *CRI) CNIFailed(operation string) {
	if m != nil {
		m.cniFailures.WithLabelValues(operation).Inc()
	}
}

// Recovered records a recovery that took seconds and found pods and
// containers in the state.
func (m *CRI) Recovered(seconds float64, pods, containers int) {
	if m == nil {
		return
	}
	m.recoverySecs.Set(seconds)
	m.recovered.WithLabelValues("pod").Set(float64(pods))
	m.recovered.WithLabelValues("container").Set(float64(containers))
}

// MarkedUnknown counts a container a recovery marked UNKNOWN.
func (m *CRI) MarkedUnknown() {
	if m != nil {
		m.markedUnknown.Inc()
	}
}

// AuraeReconnected counts a reconnection to auraed.
func (m *CRI) AuraeReconnected() {
	if m != nil {
		m.auraeReconnect.Inc()
	}
}

// GuestReconnected counts a reconnection to a VM guest's auraed.
func (m *CRI) GuestReconnected() {
	if m != nil {
		m.guestReconnect.Inc()
	}
}
