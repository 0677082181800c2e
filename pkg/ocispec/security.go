package ocispec

import (
	"bufio"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// KnownCapabilities are the Linux capabilities by number (CAP_CHOWN is 0,
// CAP_CHECKPOINT_RESTORE 40).
var KnownCapabilities = []string{
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER",
	"CAP_FSETID", "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP",
	"CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST",
	"CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER",
	"CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE",
	"CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
	"CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD",
	"CAP_LEASE", "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP",
	"CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM",
	"CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF",
	"CAP_CHECKPOINT_RESTORE",
}

// DefaultCapabilities are containerd's (and Docker's) capabilities of a
// container that is not privileged.
var DefaultCapabilities = []string{
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
	"CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
	"CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
}

// DefaultMaskedPaths and DefaultReadonlyPaths are containerd's defaults
// (without the per-CPU thermal_throttle paths it adds from the host).
var (
	DefaultMaskedPaths = []string{
		"/proc/acpi", "/proc/asound", "/proc/interrupts", "/proc/kcore",
		"/proc/keys", "/proc/latency_stats", "/proc/timer_list",
		"/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
		"/sys/devices/virtual/powercap", "/proc/scsi",
	}
	DefaultReadonlyPaths = []string{
		"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
	}
)

// CurrentCapabilities returns the effective capabilities of this process,
// for Input.AllCapabilities.
func CurrentCapabilities() ([]string, error) {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return nil, fmt.Errorf("read capabilities: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "CapEff:"); ok {
			return capabilitiesOfMask(strings.TrimSpace(v))
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read capabilities: %w", err)
	}
	return nil, fmt.Errorf("read capabilities: no CapEff in /proc/self/status")
}

// capabilitiesOfMask names the known capabilities set in a hex mask such as
// /proc's CapEff.
func capabilitiesOfMask(hex string) ([]string, error) {
	mask, err := strconv.ParseUint(hex, 16, 64)
	if err != nil {
		return nil, fmt.Errorf("capability mask %q: %w", hex, err)
	}
	caps := []string{}
	for i, name := range KnownCapabilities {
		if mask&(1<<uint(i)) != 0 {
			caps = append(caps, name)
		}
	}
	return caps, nil
}

// setCapabilities sets the capabilities as containerd does: the default
// set, "ALL" in the added ones for every capability, "ALL" in the dropped
// ones for none, then the other added and dropped ones; everything for a
// privileged container. Names may come with or without "CAP_", in any case.
// Ambient and inheritable sets stay empty.
func setCapabilities(in Input, s *specs.Spec) error {
	sc := in.Config.GetLinux().GetSecurityContext()
	all := in.AllCapabilities
	if all == nil {
		all = KnownCapabilities
	}
	var caps []string
	if sc.GetPrivileged() {
		caps = slices.Clone(all)
	} else {
		add, addAll, err := capabilityNames(sc.GetCapabilities().GetAddCapabilities())
		if err != nil {
			return err
		}
		drop, dropAll, err := capabilityNames(sc.GetCapabilities().GetDropCapabilities())
		if err != nil {
			return err
		}
		caps = slices.Clone(DefaultCapabilities)
		if addAll {
			caps = slices.Clone(all)
		}
		if dropAll {
			caps = nil
		}
		for _, c := range add {
			if !slices.Contains(caps, c) {
				caps = append(caps, c)
			}
		}
		caps = slices.DeleteFunc(caps, func(c string) bool { return slices.Contains(drop, c) })
	}
	s.Process.Capabilities = &specs.LinuxCapabilities{
		Bounding:  caps,
		Effective: slices.Clone(caps),
		Permitted: slices.Clone(caps),
	}
	return nil
}

// capabilityNames returns names in the "CAP_X" form, without "ALL", and
// whether "ALL" was among them; an unknown name is refused.
func capabilityNames(names []string) (caps []string, all bool, err error) {
	for _, n := range names {
		c := strings.ToUpper(strings.TrimSpace(n))
		if c == "ALL" {
			all = true
			continue
		}
		if !strings.HasPrefix(c, "CAP_") {
			c = "CAP_" + c
		}
		if !slices.Contains(KnownCapabilities, c) {
			return nil, false, invalid("unknown capability %q", n)
		}
		caps = append(caps, c)
	}
	return caps, all, nil
}

// setMaskedPaths sets containerd's masked and read-only paths, or the
// security context's when it names any; none for a privileged container.
func setMaskedPaths(in Input, s *specs.Spec) error {
	sc := in.Config.GetLinux().GetSecurityContext()
	if sc.GetPrivileged() {
		return nil
	}
	s.Linux.MaskedPaths = slices.Clone(DefaultMaskedPaths)
	if sc.GetMaskedPaths() != nil {
		s.Linux.MaskedPaths = slices.Clone(sc.GetMaskedPaths())
	}
	s.Linux.ReadonlyPaths = slices.Clone(DefaultReadonlyPaths)
	if sc.GetReadonlyPaths() != nil {
		s.Linux.ReadonlyPaths = slices.Clone(sc.GetReadonlyPaths())
	}
	return nil
}
