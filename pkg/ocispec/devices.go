package ocispec

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// hostDevDir is where a privileged container's devices come from.
var hostDevDir = "/dev"

// errNotDevice is returned for a path that is no block or character device.
var errNotDevice = errors.New("not a device node")

// setDevices sets the device nodes and the device cgroup: everything denied
// but the requested devices (runc adds its defaults, /dev/null and the like,
// itself). A privileged container gets every device of the host and a
// device cgroup that allows all.
func setDevices(in Input, s *specs.Spec) error {
	s.Linux.Resources.Devices = []specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}}
	seen := map[string]bool{}
	for _, d := range in.Config.GetDevices() {
		hostPath, ctrPath, perms := d.GetHostPath(), d.GetContainerPath(), d.GetPermissions()
		if hostPath == "" || !path.IsAbs(hostPath) {
			return invalid("device %q: host path is not absolute", hostPath)
		}
		if ctrPath == "" {
			ctrPath = hostPath
		}
		if err := validContainerPath(ctrPath); err != nil {
			return invalid("device %q: %w", hostPath, err)
		}
		if perms == "" {
			perms = "rwm"
		}
		if strings.Trim(perms, "rwm") != "" {
			return invalid("device %q: permissions %q are not a combination of r, w and m", hostPath, perms)
		}
		resolved, err := filepath.EvalSymlinks(hostPath)
		if errors.Is(err, fs.ErrNotExist) {
			return invalid("device %q: %w", hostPath, err)
		} else if err != nil {
			return fmt.Errorf("device %q: %w", hostPath, err)
		}
		devs, err := devicesAt(resolved, path.Clean(ctrPath))
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, errNotDevice) {
			return invalid("device %q: %w", hostPath, err)
		} else if err != nil {
			return fmt.Errorf("device %q: %w", hostPath, err)
		}
		for _, dev := range devs {
			if seen[dev.Path] {
				continue
			}
			seen[dev.Path] = true
			s.Linux.Devices = append(s.Linux.Devices, dev)
			s.Linux.Resources.Devices = append(s.Linux.Resources.Devices, specs.LinuxDeviceCgroup{
				Allow: true, Type: dev.Type, Major: &dev.Major, Minor: &dev.Minor, Access: perms,
			})
		}
	}
	if !in.Config.GetLinux().GetSecurityContext().GetPrivileged() {
		return nil
	}
	devs, err := devicesAt(hostDevDir, "")
	if err != nil {
		return fmt.Errorf("host devices: %w", err)
	}
	for _, dev := range devs {
		if !seen[dev.Path] {
			seen[dev.Path] = true
			s.Linux.Devices = append(s.Linux.Devices, dev)
		}
	}
	s.Linux.Resources.Devices = []specs.LinuxDeviceCgroup{{Allow: true, Access: "rwm"}}
	return nil
}

// devicesAt returns the device at hostPath, or the devices under it when it
// is a directory (as containerd does), placed at ctrPath ("" = where they
// are on the host). Inside a directory, what is not a device is skipped, as
// are the directories a /dev holds mounts in.
func devicesAt(hostPath, ctrPath string) ([]specs.LinuxDevice, error) {
	st, err := os.Stat(hostPath)
	if err != nil {
		return nil, err
	}
	if !st.IsDir() {
		dev, err := deviceAt(hostPath)
		if err != nil {
			return nil, err
		}
		if ctrPath != "" {
			dev.Path = ctrPath
		}
		return []specs.LinuxDevice{dev}, nil
	}
	entries, err := os.ReadDir(hostPath)
	if err != nil {
		return nil, err
	}
	var out []specs.LinuxDevice
	for _, e := range entries {
		name := e.Name()
		sub := path.Join(hostPath, name)
		subCtr := ""
		if ctrPath != "" {
			subCtr = path.Join(ctrPath, name)
		}
		if e.IsDir() {
			switch name {
			case "pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev":
				continue
			}
			devs, err := devicesAt(sub, subCtr)
			if err != nil {
				return nil, err
			}
			out = append(out, devs...)
			continue
		}
		if name == "console" {
			continue
		}
		dev, err := deviceAt(sub)
		if errors.Is(err, errNotDevice) || errors.Is(err, fs.ErrNotExist) {
			continue
		} else if err != nil {
			return nil, err
		}
		if subCtr != "" {
			dev.Path = subCtr
		}
		out = append(out, dev)
	}
	return out, nil
}

// deviceAt describes the block or character device at p (not following a
// last symbolic link).
func deviceAt(p string) (specs.LinuxDevice, error) {
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		return specs.LinuxDevice{}, &fs.PathError{Op: "lstat", Path: p, Err: err}
	}
	var typ string
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFCHR:
		typ = "c"
	case unix.S_IFBLK:
		typ = "b"
	default:
		return specs.LinuxDevice{}, fmt.Errorf("%s: %w", p, errNotDevice)
	}
	mode := fs.FileMode(st.Mode &^ unix.S_IFMT)
	uid, gid := st.Uid, st.Gid
	return specs.LinuxDevice{
		Path:     p,
		Type:     typ,
		Major:    int64(unix.Major(st.Rdev)),
		Minor:    int64(unix.Minor(st.Rdev)),
		FileMode: &mode,
		UID:      &uid,
		GID:      &gid,
	}, nil
}
