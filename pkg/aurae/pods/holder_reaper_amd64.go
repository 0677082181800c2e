package pods

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
)

// holderReaperCode is the pod holder's reaper, for x86-64 (GNU as, Intel
// syntax; assembled once and checked by TestHolderReaperELF):
//
//	_start:	mov edi, 4            # PR_SET_DUMPABLE
//		xor esi, esi          # 0
//		mov eax, 157          # prctl
//		syscall
//		test rax, rax
//		jnz fail
//		push -1               # every signal (not SIGKILL, SIGSTOP)
//		xor edi, edi          # SIG_BLOCK
//		mov rsi, rsp
//		xor edx, edx
//		mov r10d, 8
//		mov eax, 14           # rt_sigprocmask
//		syscall
//		test rax, rax
//		jnz fail
//		push 0x31             # "1"
//		mov edi, 3            # the ready pipe
//		mov rsi, rsp
//		mov edx, 1
//		mov eax, 1            # write
//		syscall
//		cmp rax, 1
//		jne fail
//		mov edi, 3
//		mov eax, 3            # close
//		syscall
//		mov qword ptr [rsp], 0x10000   # {SIGCHLD}
//	reap:	mov edi, -1           # any child
//		xor esi, esi
//		mov edx, 0x40000001   # WNOHANG|__WALL
//		xor r10d, r10d
//		mov eax, 61           # wait4
//		syscall
//		test rax, rax
//		jg reap               # reaped one: look for more
//		mov rdi, rsp          # {SIGCHLD}, blocked hence kept pending
//		xor esi, esi
//		xor edx, edx
//		mov r10d, 8
//		mov eax, 128          # rt_sigtimedwait
//		syscall
//		jmp reap
//	fail:	mov edi, 1
//		mov eax, 231          # exit_group
//		syscall
var holderReaperCode = []byte{
	0xbf, 0x04, 0x00, 0x00, 0x00, 0x31, 0xf6, 0xb8, 0x9d, 0x00, 0x00, 0x00, 0x0f, 0x05, 0x48, 0x85,
	0xc0, 0x75, 0x7c, 0x6a, 0xff, 0x31, 0xff, 0x48, 0x89, 0xe6, 0x31, 0xd2, 0x41, 0xba, 0x08, 0x00,
	0x00, 0x00, 0xb8, 0x0e, 0x00, 0x00, 0x00, 0x0f, 0x05, 0x48, 0x85, 0xc0, 0x75, 0x61, 0x6a, 0x31,
	0xbf, 0x03, 0x00, 0x00, 0x00, 0x48, 0x89, 0xe6, 0xba, 0x01, 0x00, 0x00, 0x00, 0xb8, 0x01, 0x00,
	0x00, 0x00, 0x0f, 0x05, 0x48, 0x83, 0xf8, 0x01, 0x75, 0x45, 0xbf, 0x03, 0x00, 0x00, 0x00, 0xb8,
	0x03, 0x00, 0x00, 0x00, 0x0f, 0x05, 0x48, 0xc7, 0x04, 0x24, 0x00, 0x00, 0x01, 0x00, 0xbf, 0xff,
	0xff, 0xff, 0xff, 0x31, 0xf6, 0xba, 0x01, 0x00, 0x00, 0x40, 0x45, 0x31, 0xd2, 0xb8, 0x3d, 0x00,
	0x00, 0x00, 0x0f, 0x05, 0x48, 0x85, 0xc0, 0x7f, 0xe5, 0x48, 0x89, 0xe7, 0x31, 0xf6, 0x31, 0xd2,
	0x41, 0xba, 0x08, 0x00, 0x00, 0x00, 0xb8, 0x80, 0x00, 0x00, 0x00, 0x0f, 0x05, 0xeb, 0xcf, 0xbf,
	0x01, 0x00, 0x00, 0x00, 0xb8, 0xe7, 0x00, 0x00, 0x00, 0x0f, 0x05,
}

// holderReaperELF returns a static ELF executable of holderReaperCode: one
// read+execute PT_LOAD segment holding the headers and the code, and a
// non-executable stack.
func holderReaperELF() []byte {
	const (
		base   = 0x400000
		ehsize = 64
		phsize = 56
		phnum  = 2
	)
	hdrs := uint64(ehsize + phnum*phsize)
	size := hdrs + uint64(len(holderReaperCode))
	eh := elf.Header64{
		Type: uint16(elf.ET_EXEC), Machine: uint16(elf.EM_X86_64), Version: uint32(elf.EV_CURRENT),
		Entry: base + hdrs, Phoff: ehsize, Ehsize: ehsize, Phentsize: phsize, Phnum: phnum,
	}
	copy(eh.Ident[:], elf.ELFMAG)
	eh.Ident[elf.EI_CLASS] = byte(elf.ELFCLASS64)
	eh.Ident[elf.EI_DATA] = byte(elf.ELFDATA2LSB)
	eh.Ident[elf.EI_VERSION] = byte(elf.EV_CURRENT)
	progs := []elf.Prog64{
		{Type: uint32(elf.PT_LOAD), Flags: uint32(elf.PF_R | elf.PF_X), Vaddr: base, Paddr: base, Filesz: size, Memsz: size, Align: 0x1000},
		{Type: uint32(elf.PT_GNU_STACK), Flags: uint32(elf.PF_R | elf.PF_W), Align: 16},
	}
	var b bytes.Buffer
	_ = binary.Write(&b, binary.LittleEndian, eh)
	_ = binary.Write(&b, binary.LittleEndian, progs)
	b.Write(holderReaperCode)
	return b.Bytes()
}
