package image

import "time"

// IndexReady reports whether s answers image calls from its index (it has
// subscribed to containerd's image events and listed every record).
func IndexReady(s *Service) bool {
	_, _, ok := s.idx.record("")
	return ok
}

// DelayLeaseDrops makes s wait d before it deletes a pull's lease.
func DelayLeaseDrops(s *Service, d time.Duration) {
	s.awaitLeaseDrops()
	s.beforeLeaseDrop = func() { time.Sleep(d) }
}
