//go:build !amd64 && !arm64

package holder

// ReaperELF is nil: no reaper is written for this architecture yet. A pod
// that shares its pid namespace fails to allocate there (confineHolder);
// the short-lived holders of other pods are not confined.
func ReaperELF() []byte { return nil }
