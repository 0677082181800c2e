package cri

import (
	"sort"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/pkg/metrics"
)

// defaultHandlerLabel names the runtime handler "" (no RuntimeClass) in
// metric labels.
const defaultHandlerLabel = "default"

// handlerLabel is the runtime_handler label of a pod's metrics.
func (r *Runtime) handlerLabel(podID string) string {
	sb, err := r.store.Sandbox(podID)
	if err != nil {
		return "unknown"
	}
	return handlerName(sb.RuntimeHandler)
}

func handlerName(h string) string {
	if h == "" {
		return defaultHandlerLabel
	}
	return h
}

// stateName is the state label of a CRI enum name: SANDBOX_READY is
// "ready", CONTAINER_RUNNING "running".
func stateName(enum string) string {
	_, s, _ := strings.Cut(enum, "_")
	return strings.ToLower(s)
}

// StateCollectors are the gauges of the pods and containers of the store
// by state and runtime handler, counted from memory at each scrape. Every
// state of every configured handler is reported, 0 when none is in it.
func (r *Runtime) StateCollectors() []prometheus.Collector {
	var handlers []string
	for h := range r.cfg.Controllers {
		handlers = append(handlers, handlerName(h))
	}
	sort.Strings(handlers)
	var podZero, ctrZero [][]string
	for _, h := range handlers {
		for _, s := range []runtimeapi.PodSandboxState{runtimeapi.PodSandboxState_SANDBOX_READY, runtimeapi.PodSandboxState_SANDBOX_NOTREADY} {
			podZero = append(podZero, []string{stateName(s.String()), h})
		}
		for _, s := range []runtimeapi.ContainerState{runtimeapi.ContainerState_CONTAINER_CREATED, runtimeapi.ContainerState_CONTAINER_RUNNING,
			runtimeapi.ContainerState_CONTAINER_EXITED, runtimeapi.ContainerState_CONTAINER_UNKNOWN} {
			ctrZero = append(ctrZero, []string{stateName(s.String()), h})
		}
	}
	labels := []string{"state", "runtime_handler"}
	pods := metrics.NewCounts(metrics.CRINamespace+"_pods", "Pod sandboxes recorded, by state (ready, notready) and runtime handler (default: none named).", labels,
		func(add func(float64, ...string)) {
			for _, sb := range r.store.Sandboxes() {
				add(1, stateName(sb.Status.State.String()), handlerName(sb.RuntimeHandler))
			}
		}).Zero(podZero...)
	containers := metrics.NewCounts(metrics.CRINamespace+"_containers", "Containers recorded, by state (created, running, exited, unknown) and their pod's runtime handler.", labels,
		func(add func(float64, ...string)) {
			handlerOf := map[string]string{}
			for _, sb := range r.store.Sandboxes() {
				handlerOf[sb.ID] = handlerName(sb.RuntimeHandler)
			}
			for _, c := range r.store.Containers() {
				h, ok := handlerOf[c.SandboxID]
				if !ok {
					h = "unknown"
				}
				add(1, stateName(c.Status.State.String()), h)
			}
		}).Zero(ctrZero...)
	return []prometheus.Collector{pods, containers}
}
