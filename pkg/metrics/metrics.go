// Package metrics is what aurae-cri and auraed tell Prometheus: a registry
// of their own (never the global one) with the Go runtime and process
// collectors, the per-method gRPC metrics the shared server interceptors
// feed, gauges computed at scrape time from the daemons' own records, and
// the /metrics HTTP endpoint (plain HTTP on loopback only, else mutual TLS).
//
// Names are <namespace>_<subsystem>_<name> in base units, counters end in
// _total, and no label ever carries a pod or container name or id.
package metrics

import (
	"sort"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Namespaces of the two daemons' metrics.
const (
	CRINamespace    = "aurae_cri"
	AuraedNamespace = "auraed"
)

// LatencyBuckets are the bounds (seconds) of the latency histograms: from
// 1 ms to the kubelet's 2 min timeout, with 12 s (a tenth of it, the bound
// the README's alert uses) among them.
var LatencyBuckets = []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 12, 30, 60, 120}

// NewRegistry returns a registry holding the Go runtime and process
// collectors.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return reg
}

// Counts is a gauge vector computed at each scrape by a function that
// counts objects; values added for the same labels are summed, and label
// sets given in Zero are reported even when nothing was counted for them.
type Counts struct {
	desc   *prometheus.Desc
	labels int
	count  func(add func(v float64, labelValues ...string))
	zero   [][]string
}

// NewCounts returns a Counts named name with the help text and label names
// given; count is called at each scrape, and must not block.
func NewCounts(name, help string, labels []string, count func(add func(v float64, labelValues ...string))) *Counts {
	return &Counts{desc: prometheus.NewDesc(name, help, labels, nil), labels: len(labels), count: count}
}

// Zero makes the label sets given always reported (0 when nothing counts
// for them), so that a rate or an alert has a series from the start.
func (c *Counts) Zero(labelValues ...[]string) *Counts {
	c.zero = append(c.zero, labelValues...)
	return c
}

// Describe implements prometheus.Collector.
func (c *Counts) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

// Collect implements prometheus.Collector.
func (c *Counts) Collect(ch chan<- prometheus.Metric) {
	sums := map[string]float64{}
	for _, lv := range c.zero {
		sums[strings.Join(lv, "\x00")] += 0
	}
	c.count(func(v float64, lv ...string) {
		if len(lv) != c.labels {
			return // a bug in count; never a malformed series
		}
		sums[strings.Join(lv, "\x00")] += v
	})
	keys := make([]string, 0, len(sums))
	for k := range sums {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		var lv []string
		if c.labels > 0 {
			lv = strings.Split(k, "\x00")
		}
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, sums[k], lv...)
	}
}
