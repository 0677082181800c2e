package pods

import "debug/elf"

func holderReaperELF() []byte { return reaperELF(elf.EM_AARCH64, reaperARM64) }
