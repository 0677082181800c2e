package image

// IndexReady reports whether s answers image calls from its index (it has
// subscribed to containerd's image events and listed every record).
func IndexReady(s *Service) bool {
	_, _, ok := s.idx.record("")
	return ok
}
