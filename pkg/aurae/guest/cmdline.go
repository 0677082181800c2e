// Package guest is auraed as the init (PID 1) of an aurae microVM: it
// prepares the machine (mounts, hostname, loopback), starts the serving
// auraed as its child, reaps orphans and powers the VM off; and it gives the
// serving auraed its listener: a virtio-serial port (or vsock) that the
// host's VmService reaches through a unix socket.
//
// The split into two processes keeps wait4(-1) away from the process whose
// services wait for their own children (cells' executables, conmon): the
// reaper in PID 1 never steals an exit status auraed needs.
package guest

import (
	"fmt"
	"log/slog"
	"os"
	"path"
	"strconv"
	"strings"
)

// Transports the guest auraed can serve on.
const (
	TransportVirtioSerial = "virtio-serial"
	TransportVsock        = "vsock"
)

// Defaults of the kernel command line keys.
const (
	DefaultHostname  = "aurae"
	DefaultPort      = "aurae.0"
	DefaultVsockPort = 1024
)

// Config is what the kernel command line says (aurae.* keys).
type Config struct {
	// Hostname: aurae.hostname= (default "aurae").
	Hostname string
	// Transport: aurae.transport=virtio-serial|vsock (default virtio-serial).
	Transport string
	// Port is the virtio-serial port name: aurae.port= (default "aurae.0").
	Port string
	// VsockPort: aurae.vsock_port= (default 1024).
	VsockPort uint32
	// LogLevel: aurae.log_level= (default info).
	LogLevel slog.Level
	// VirtioFS are the virtio-fs shares the init mounts before the serving
	// auraed starts: aurae.virtiofs=<tag>:<absolute path>, repeatable.
	VirtioFS []VirtioFSMount
	// TCG: aurae.tcg=1, the guest runs under QEMU's TCG: the serving
	// auraed and what it starts run without address space randomization
	// (see RunInit).
	TCG bool
}

// VirtioFSMount is a virtio-fs share (its tag) and where the guest mounts it.
type VirtioFSMount struct {
	Tag, Path string
}

// ReadConfig parses /proc/cmdline (or, before /proc is mounted or outside a
// guest, returns the defaults with the error).
func ReadConfig() (Config, error) {
	b, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return ParseCmdline(""), err
	}
	return ParseCmdline(string(b)), nil
}

// ParseCmdline reads the aurae.* keys of a kernel command line; unknown keys
// and malformed values are ignored (defaults kept).
func ParseCmdline(cmdline string) Config {
	c := Config{
		Hostname:  DefaultHostname,
		Transport: TransportVirtioSerial,
		Port:      DefaultPort,
		VsockPort: DefaultVsockPort,
		LogLevel:  slog.LevelInfo,
	}
	for _, f := range strings.Fields(cmdline) {
		k, v, ok := strings.Cut(f, "=")
		if !ok || v == "" {
			continue
		}
		switch k {
		case "aurae.hostname":
			c.Hostname = v
		case "aurae.transport":
			if v == TransportVirtioSerial || v == TransportVsock {
				c.Transport = v
			}
		case "aurae.port":
			if !strings.ContainsAny(v, "/") {
				c.Port = v
			}
		case "aurae.vsock_port":
			if n, err := strconv.ParseUint(v, 10, 32); err == nil {
				c.VsockPort = uint32(n)
			}
		case "aurae.virtiofs":
			tag, dir, ok := strings.Cut(v, ":")
			if ok && tag != "" && !strings.ContainsAny(tag, "/:") && path.IsAbs(dir) && path.Clean(dir) == dir && dir != "/" {
				c.VirtioFS = append(c.VirtioFS, VirtioFSMount{Tag: tag, Path: dir})
			}
		case "aurae.tcg":
			c.TCG = v == "1"
		case "aurae.log_level":
			var l slog.Level
			if l.UnmarshalText([]byte(v)) == nil {
				c.LogLevel = l
			}
		}
	}
	return c
}

func (c Config) String() string {
	return fmt.Sprintf("hostname=%s transport=%s port=%s vsock_port=%d log_level=%s virtiofs=%v tcg=%t",
		c.Hostname, c.Transport, c.Port, c.VsockPort, c.LogLevel, c.VirtioFS, c.TCG)
}
