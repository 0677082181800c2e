package hypervisor

import "golang.org/x/sys/unix"

// auditArch is the architecture the virtiofsd filter accepts.
const auditArch = unix.AUDIT_ARCH_X86_64

// x32Bit marks the x32 ABI's system calls, which the filter refuses.
const x32Bit = 0x40000000

// sysFchmodat2 is too new for x/sys/unix.
const sysFchmodat2 = 452

// setIDModeCalls set or create a file with mode bits: the index of the
// mode argument of each.
var setIDModeCalls = []syscallArg{
	{unix.SYS_CHMOD, 1}, {unix.SYS_FCHMOD, 1}, {unix.SYS_FCHMODAT, 2}, {sysFchmodat2, 2},
	{unix.SYS_OPEN, 2}, {unix.SYS_OPENAT, 3}, {unix.SYS_CREAT, 1},
}

// mknodCalls make a node: the index of the mode argument of each.
var mknodCalls = []syscallArg{{unix.SYS_MKNOD, 1}, {unix.SYS_MKNODAT, 2}}

// refusedCalls fail with EPERM: extended attributes (security.capability
// would make a privileged file) ...
var refusedCalls = []uint32{unix.SYS_SETXATTR, unix.SYS_LSETXATTR, unix.SYS_FSETXATTR}

// ... and these with ENOSYS: calls whose arguments the filter cannot see
// (openat2's mode is in a struct; io_uring submits calls without them).
var unseenCalls = []uint32{unix.SYS_OPENAT2, unix.SYS_IO_URING_SETUP}
