//go:build !amd64

package hypervisor

// Only x86-64 has a virtiofsd filter; elsewhere shares are refused.
const (
	auditArch    = 0
	x32Bit       = 0
	sysFchmodat2 = 0
)

var (
	setIDModeCalls []syscallArg
	mknodCalls     []syscallArg
	refusedCalls   []uint32
	unseenCalls    []uint32
)
