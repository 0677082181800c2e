package vms

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	vmsv0 "github.com/aurae-runtime/aurae-cri/api/vms/v0"
)

const (
	maxIDLen = 64
	minMemMB = 64
	// maxCmdline is x86's COMMAND_LINE_SIZE, less what the hypervisor adds.
	maxCmdline = 2000
	maxDrives  = 16
)

// validID checks a VM id: a portable file name, safe as a directory name
// and in a QEMU option list. A leading '.' is refused so that ids never
// collide with the service's own entries (".accel").
func validID(s string) error {
	if s == "" {
		return fmt.Errorf("vm id is empty: %w", errdefs.ErrInvalidArgument)
	}
	if len(s) > maxIDLen {
		return fmt.Errorf("vm id %q is longer than %d characters: %w", s, maxIDLen, errdefs.ErrInvalidArgument)
	}
	if s[0] == '.' {
		return fmt.Errorf("vm id %q starts with '.': %w", s, errdefs.ErrInvalidArgument)
	}
	for _, r := range s {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.'
		if !ok {
			return fmt.Errorf("vm id %q: character %q is not allowed (letters, digits, '-', '_', '.'): %w", s, r, errdefs.ErrInvalidArgument)
		}
	}
	return nil
}

// hostMemMB is the host's RAM in MiB.
func hostMemMB() uint64 {
	var si unix.Sysinfo_t
	if err := unix.Sysinfo(&si); err != nil {
		return 0
	}
	return uint64(si.Totalram) * uint64(si.Unit) >> 20
}

// validSpec checks a VM spec against the host; it touches nothing. A file
// that is missing or of the wrong kind is an invalid argument naming it.
func validSpec(m *vmsv0.VirtualMachine) error {
	if m == nil {
		return fmt.Errorf("machine is missing: %w", errdefs.ErrInvalidArgument)
	}
	if err := validID(m.GetId()); err != nil {
		return err
	}
	if n, max := m.GetVcpuCount(), runtime.NumCPU(); n < 1 || int(n) > max {
		return fmt.Errorf("vm %q: vcpu_count %d is out of range 1..%d (host CPUs): %w", m.GetId(), n, max, errdefs.ErrInvalidArgument)
	}
	if n, max := uint64(m.GetMemSizeMb()), hostMemMB()/2; n < minMemMB || n > max {
		return fmt.Errorf("vm %q: mem_size_mb %d is out of range %d..%d (half the host's RAM): %w", m.GetId(), n, minMemMB, max, errdefs.ErrInvalidArgument)
	}
	if err := validFile("kernel_img_path", m.GetKernelImgPath()); err != nil {
		return fmt.Errorf("vm %q: %w", m.GetId(), err)
	}
	cmdline := 0
	for _, a := range m.GetKernelArgs() {
		if a == "" || strings.ContainsFunc(a, func(r rune) bool { return r < ' ' || r == 0x7f }) {
			return fmt.Errorf("vm %q: kernel arg %q is empty or has control characters: %w", m.GetId(), a, errdefs.ErrInvalidArgument)
		}
		cmdline += len(a) + 1
	}
	if cmdline > maxCmdline {
		return fmt.Errorf("vm %q: kernel args are %d bytes, more than %d: %w", m.GetId(), cmdline, maxCmdline, errdefs.ErrInvalidArgument)
	}
	if rd := m.GetRootDrive(); rd != nil {
		if err := validFile("root_drive.host_path", rd.GetHostPath()); err != nil {
			return fmt.Errorf("vm %q: %w", m.GetId(), err)
		}
	}
	if len(m.GetDriveMounts()) > maxDrives {
		return fmt.Errorf("vm %q: %d drive mounts, at most %d: %w", m.GetId(), len(m.GetDriveMounts()), maxDrives, errdefs.ErrInvalidArgument)
	}
	seen := map[string]bool{}
	for i, d := range m.GetDriveMounts() {
		what := fmt.Sprintf("drive_mounts[%d]", i)
		if err := validFile(what+".host_path", d.GetHostPath()); err != nil {
			return fmt.Errorf("vm %q: %w", m.GetId(), err)
		}
		p := d.GetVmPath()
		if !strings.HasPrefix(p, "/") || filepath.Clean(p) != p || strings.ContainsAny(p, ": \t\n") {
			return fmt.Errorf("vm %q: %s.vm_path %q must be a clean absolute path without ':' or blanks: %w", m.GetId(), what, p, errdefs.ErrInvalidArgument)
		}
		if seen[p] {
			return fmt.Errorf("vm %q: %s.vm_path %q is mounted twice: %w", m.GetId(), what, p, errdefs.ErrInvalidArgument)
		}
		seen[p] = true
		if strings.ContainsAny(d.GetFsType(), ": \t\n,") {
			return fmt.Errorf("vm %q: %s.fs_type %q: %w", m.GetId(), what, d.GetFsType(), errdefs.ErrInvalidArgument)
		}
	}
	return validNetAndShares(m)
}

// validFile checks that path is absolute and names an existing file or
// block device (not a directory).
func validFile(what, path string) error {
	if path == "" {
		return fmt.Errorf("%s is empty: %w", what, errdefs.ErrInvalidArgument)
	}
	if !filepath.IsAbs(path) {
		return fmt.Errorf("%s %q is not absolute: %w", what, path, errdefs.ErrInvalidArgument)
	}
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("%s %s: %w: %w", what, path, err, errdefs.ErrInvalidArgument)
	}
	if fi.IsDir() {
		return fmt.Errorf("%s %s is a directory: %w", what, path, errdefs.ErrInvalidArgument)
	}
	return nil
}
