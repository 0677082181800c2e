package hypervisor

import (
	"fmt"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// virtiofsd serves the guest's file operations as root on the host. Its
// own sandbox (new mount, pid and net namespaces, pivot_root into the
// shared dir, a capability set) keeps it inside the shared dir; what it
// makes there is the guest's to choose. So that nothing a guest makes in
// a share becomes a privileged file on the host, virtiofsd runs:
//
//   - without CAP_MKNOD (no device node), CAP_FSETID (a write clears a
//     file's set-user-ID and set-group-ID bits, as it does for any
//     unprivileged writer) and CAP_SETFCAP;
//   - under a seccomp filter of ours, installed before it starts, that
//     refuses with EPERM any mode with the set-user-ID or set-group-ID bit
//     (chmod and friends, open and mknod with such a mode), any device
//     node, and extended attributes (security.capability); and with ENOSYS
//     the calls whose arguments a filter cannot see (openat2, io_uring).
//
// A guest's chmod u+s in a share therefore fails with EPERM.

// syscallArg is a system call and the index of its mode argument.
type syscallArg struct{ nr, arg uint32 }

// The seccomp return values, and seccomp_data's offsets.
const (
	retAllow     = 0x7fff0000 // SECCOMP_RET_ALLOW
	retErrno     = 0x00050000 // SECCOMP_RET_ERRNO
	retKill      = 0x80000000 // SECCOMP_RET_KILL_PROCESS
	offNr        = 0
	offArch      = 4
	offArgs      = 16
	setIDBits    = unix.S_ISUID | unix.S_ISGID
	fileTypeMask = unix.S_IFMT
)

func bpfStmt(code uint16, k uint32) unix.SockFilter { return unix.SockFilter{Code: code, K: k} }

func bpfJump(code uint16, k uint32, jt, jf uint8) unix.SockFilter {
	return unix.SockFilter{Code: code, Jt: jt, Jf: jf, K: k}
}

const (
	ldAbs    = unix.BPF_LD | unix.BPF_W | unix.BPF_ABS
	jeqK     = unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K
	jgeK     = unix.BPF_JMP | unix.BPF_JGE | unix.BPF_K
	jsetK    = unix.BPF_JMP | unix.BPF_JSET | unix.BPF_K
	andK     = unix.BPF_ALU | unix.BPF_AND | unix.BPF_K
	retK     = unix.BPF_RET | unix.BPF_K
	errPerm  = retErrno | uint32(unix.EPERM)
	errNoSys = retErrno | uint32(unix.ENOSYS)
)

// virtiofsdFilter is the seccomp program described above.
func virtiofsdFilter() ([]unix.SockFilter, error) {
	if auditArch == 0 {
		return nil, fmt.Errorf("no virtiofsd seccomp filter for %s", runtime.GOARCH)
	}
	p := []unix.SockFilter{
		bpfStmt(ldAbs, offArch),
		bpfJump(jeqK, auditArch, 1, 0),
		bpfStmt(retK, retKill),
		bpfStmt(ldAbs, offNr),
		bpfJump(jgeK, x32Bit, 0, 1),
		bpfStmt(retK, errNoSys),
	}
	for _, nr := range refusedCalls {
		p = append(p, bpfJump(jeqK, nr, 0, 1), bpfStmt(retK, errPerm))
	}
	for _, nr := range unseenCalls {
		p = append(p, bpfJump(jeqK, nr, 0, 1), bpfStmt(retK, errNoSys))
	}
	// Each check below ends in a return: the accumulator holds an
	// argument, not the call's number, once it loaded one.
	for _, c := range setIDModeCalls {
		p = append(p,
			bpfJump(jeqK, c.nr, 0, 4),
			bpfStmt(ldAbs, offArgs+8*c.arg), // the low half (little endian)
			bpfJump(jsetK, setIDBits, 0, 1),
			bpfStmt(retK, errPerm),
			bpfStmt(retK, retAllow),
		)
	}
	for _, c := range mknodCalls {
		p = append(p,
			bpfJump(jeqK, c.nr, 0, 7),
			bpfStmt(ldAbs, offArgs+8*c.arg),
			bpfJump(jsetK, setIDBits, 3, 0),
			bpfStmt(andK, fileTypeMask),
			bpfJump(jeqK, unix.S_IFCHR, 1, 0),
			bpfJump(jeqK, unix.S_IFBLK, 0, 1),
			bpfStmt(retK, errPerm),
			bpfStmt(retK, retAllow),
		)
	}
	return append(p, bpfStmt(retK, retAllow)), nil
}

// installFilter sets no_new_privs and installs prog on every thread of
// this process (which then execs virtiofsd, keeping it).
func installFilter(prog []unix.SockFilter) error {
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("no_new_privs: %w", err)
	}
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	if _, _, errno := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, unix.SECCOMP_FILTER_FLAG_TSYNC, uintptr(unsafe.Pointer(&fprog))); errno != 0 {
		return fmt.Errorf("seccomp: %w", errno)
	}
	return nil
}
