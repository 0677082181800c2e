package cgroup

import (
	"errors"
	"fmt"
	"os"
	"strings"
)

// Driver is who makes the cgroups of pods and containers: auraed itself in
// cgroupfs, or systemd as transient units (slices and scopes) over D-Bus, as
// runc's and containerd's systemd drivers do.
type Driver string

// The cgroup drivers.
const (
	Cgroupfs Driver = "cgroupfs"
	Systemd  Driver = "systemd"
)

// ErrDriver is returned for a cgroup driver this host cannot use.
var ErrDriver = errors.New("cgroup driver not usable on this host")

// Host is what the choice of a driver depends on.
type Host struct {
	// Unified: the host is cgroup v2 only.
	Unified bool
	// SystemdInit: PID 1 is systemd (sd_booted: /run/systemd/system).
	SystemdInit bool
}

// ThisHost describes the running host.
func ThisHost() Host {
	return Host{Unified: Unified(), SystemdInit: SystemdIsInit()}
}

// SystemdIsInit reports whether systemd is PID 1: sd_booted's test (the
// /run/systemd/system directory) and PID 1's name.
func SystemdIsInit() bool {
	st, err := os.Lstat("/run/systemd/system")
	if err != nil || !st.IsDir() {
		return false
	}
	comm, err := os.ReadFile("/proc/1/comm")
	return err == nil && strings.TrimSpace(string(comm)) == "systemd"
}

// ChooseDriver resolves a --cgroup-driver value: "" picks systemd when
// systemd is PID 1 on a cgroup v2 host and cgroupfs otherwise; "systemd" is
// refused (ErrDriver) where systemd is not PID 1 or the host is not cgroup
// v2 only (the systemd driver is offered on unified hosts: the kubelet
// refuses cgroup v1 by default since 1.35).
func ChooseDriver(flag string, h Host) (Driver, error) {
	switch Driver(flag) {
	case "":
		if h.SystemdInit && h.Unified {
			return Systemd, nil
		}
		return Cgroupfs, nil
	case Cgroupfs:
		return Cgroupfs, nil
	case Systemd:
		if !h.SystemdInit {
			return "", fmt.Errorf("cgroup driver systemd: PID 1 is not systemd (no /run/systemd/system): %w; use --cgroup-driver cgroupfs", ErrDriver)
		}
		if !h.Unified {
			return "", fmt.Errorf("cgroup driver systemd: the host is not cgroup v2 only (cgroup v1 or hybrid): %w; use --cgroup-driver cgroupfs", ErrDriver)
		}
		return Systemd, nil
	default:
		return "", fmt.Errorf("cgroup driver %q: want systemd or cgroupfs", flag)
	}
}
