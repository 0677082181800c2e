package daemon

import (
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	vmsv0 "github.com/aurae-runtime/aurae-cri/api/vms/v0"
	"github.com/aurae-runtime/aurae-cri/pkg/metrics"
)

// Collectors are the gauges of the daemon's state, counted from memory at
// each scrape: VMs by state and cells.
func (d *Daemon) Collectors() []prometheus.Collector {
	var zero [][]string
	for _, s := range []vmsv0.VmState{vmsv0.VmState_VM_STATE_CREATED, vmsv0.VmState_VM_STATE_RUNNING, vmsv0.VmState_VM_STATE_STOPPED} {
		zero = append(zero, []string{vmStateName(s)})
	}
	vms := metrics.NewCounts(metrics.AuraedNamespace+"_vms", "Virtual machines of the VmService, by state (created, running, stopped).", []string{"state"},
		func(add func(float64, ...string)) {
			if d.vms == nil {
				return
			}
			for s, n := range d.vms.StateCounts() {
				add(float64(n), vmStateName(s))
			}
		}).Zero(zero...)
	cells := metrics.NewCounts(metrics.AuraedNamespace+"_cells", "Cells of the CellService (nested ones included).", nil,
		func(add func(float64, ...string)) { add(float64(d.cells.Count())) }).Zero([]string{})
	return []prometheus.Collector{vms, cells}
}

// vmStateName is the state label of a VmState: VM_STATE_RUNNING is
// "running".
func vmStateName(s vmsv0.VmState) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "VM_STATE_"))
}
