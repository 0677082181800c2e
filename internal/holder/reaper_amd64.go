package holder

import "debug/elf"

// ReaperELF is the reaper (reaper.go) as a static executable for this
// architecture.
func ReaperELF() []byte { return reaperELF(elf.EM_X86_64, reaperAMD64) }
