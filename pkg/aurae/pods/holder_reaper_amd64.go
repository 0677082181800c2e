package pods

import "debug/elf"

func holderReaperELF() []byte { return reaperELF(elf.EM_X86_64, reaperAMD64) }
