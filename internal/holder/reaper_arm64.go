package holder

import "debug/elf"

// ReaperELF is the reaper (reaper.go) as a static executable for this
// architecture.
func ReaperELF() []byte { return reaperELF(elf.EM_AARCH64, reaperARM64) }
