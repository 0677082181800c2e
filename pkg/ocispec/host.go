package ocispec

import (
	"bufio"
	"errors"
	"os"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// HostFeatures are what the host that runs the container offers, probed
// once by the caller (ProbeHost) and injectable for tests.
type HostFeatures struct {
	// AppArmor: /sys/module/apparmor/parameters/enabled is "Y".
	AppArmor bool
	// AppArmorProfiles are the names of the AppArmor profiles loaded
	// (/sys/kernel/security/apparmor/profiles); nil reads them when asked.
	AppArmorProfiles func() ([]string, error)
	// SELinux: /sys/fs/selinux/enforce exists.
	SELinux bool
	// RecursiveReadOnly: the kernel has mount_setattr(2), which runc's
	// "rro" mount option needs.
	RecursiveReadOnly bool
	// UserNamespaces: pods with a user namespace of their own can run,
	// their rootfs an overlay of id-mapped layers (Linux 5.19) and their
	// volumes id-mapped; probed by the CRI where it mounts rootfs.
	UserNamespaces bool
}

var (
	probeOnce sync.Once
	probed    HostFeatures
)

// ProbeHost probes this host's features, once per process.
func ProbeHost() HostFeatures {
	probeOnce.Do(func() {
		b, err := os.ReadFile("/sys/module/apparmor/parameters/enabled")
		probed.AppArmor = err == nil && strings.TrimSpace(string(b)) == "Y"
		_, err = os.Stat("/sys/fs/selinux/enforce")
		probed.SELinux = err == nil
		probed.RecursiveReadOnly = hasMountSetattr()
	})
	return probed
}

// hasMountSetattr calls mount_setattr(2) with an invalid fd: a kernel that
// has it answers EBADF, one that has not ENOSYS.
func hasMountSetattr() bool {
	err := unix.MountSetattr(-1, "", unix.AT_EMPTY_PATH, &unix.MountAttr{})
	return !errors.Is(err, unix.ENOSYS)
}

// loadedAppArmorProfiles lists the loaded AppArmor profiles: the lines of
// the profiles file are "name (mode)".
func loadedAppArmorProfiles() ([]string, error) {
	f, err := os.Open("/sys/kernel/security/apparmor/profiles")
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }()
	var names []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if i := strings.LastIndex(line, " ("); i > 0 {
			line = line[:i]
		}
		if line != "" {
			names = append(names, line)
		}
	}
	return names, sc.Err()
}
