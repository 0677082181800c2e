package vms

import (
	"sort"

	vmsv0 "github.com/aurae-runtime/aurae-cri/api/vms/v0"
)

// visible is every VM but those reserved by a Create in progress.
func (s *Service) visible() []*vm {
	s.mu.RLock()
	defer s.mu.RUnlock()
	vms := make([]*vm, 0, len(s.vms))
	for _, v := range s.vms {
		if !v.reserved {
			vms = append(vms, v)
		}
	}
	return vms
}

// list is every VM, sorted by id, from memory: a wedged VM never blocks it.
func (s *Service) list() []*vmsv0.VmSummary {
	vms := s.visible()
	sort.Slice(vms, func(i, j int) bool { return vms[i].id < vms[j].id })
	out := make([]*vmsv0.VmSummary, 0, len(vms))
	for _, v := range vms {
		out = append(out, s.summary(v))
	}
	return out
}

// StateCounts is how many VMs are in each state, from memory (for the
// metrics: a wedged VM never blocks it).
func (s *Service) StateCounts() map[vmsv0.VmState]int {
	vms := s.visible()
	out := map[vmsv0.VmState]int{}
	for _, v := range vms {
		out[v.status().State]++
	}
	return out
}
