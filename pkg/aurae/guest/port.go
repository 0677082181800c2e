package guest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// pollInterval is how often a port is looked at while the host side is not
// connected (a virtio-serial port then polls as POLLHUP and reads as EOF).
const pollInterval = 50 * time.Millisecond

// PortListener is a net.Listener over one virtio-serial port: it yields one
// connection at a time, once the host side is connected; when the host
// disconnects (reads return EOF), the connection ends, the port is closed
// (dropping what the guest had not read) and re-opened for the next one.
//
// QEMU does not read the host's unix socket while the guest has the port
// closed, so a host that connects early loses nothing.
type PortListener struct {
	name string
	log  *slog.Logger

	ctx    context.Context
	cancel context.CancelFunc
	// free holds a token while no connection is open.
	free chan struct{}
}

// ListenPort returns a listener on the virtio-serial port called name
// (e.g. "aurae.0"). It fails when no such port exists.
func ListenPort(name string, log *slog.Logger) (*PortListener, error) {
	if log == nil {
		log = slog.Default()
	}
	if _, err := PortDevice(name); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	l := &PortListener{name: name, log: log, ctx: ctx, cancel: cancel, free: make(chan struct{}, 1)}
	l.free <- struct{}{}
	return l, nil
}

// PortDevice finds the device of the virtio-serial port called name: the
// udev link /dev/virtio-ports/<name> when it exists, else the port whose
// /sys/class/virtio-ports/*/name matches (the link is then made, as udev would).
func PortDevice(name string) (string, error) {
	link := filepath.Join("/dev/virtio-ports", name)
	if _, err := os.Stat(link); err == nil {
		return link, nil
	}
	ports, _ := filepath.Glob("/sys/class/virtio-ports/*/name")
	for _, p := range ports {
		b, err := os.ReadFile(p)
		if err != nil || strings.TrimSpace(string(b)) != name {
			continue
		}
		dev := filepath.Join("/dev", filepath.Base(filepath.Dir(p)))
		if _, err := os.Stat(dev); err != nil {
			return "", fmt.Errorf("virtio-serial port %q: %w", name, err)
		}
		if err := os.MkdirAll("/dev/virtio-ports", 0o755); err == nil {
			_ = os.Symlink("../"+filepath.Base(dev), link)
		}
		return dev, nil
	}
	return "", fmt.Errorf("no virtio-serial port named %q (give QEMU -device virtserialport,name=%s): %w", name, name, os.ErrNotExist)
}

// Accept waits until the previous connection is closed and the host side is
// connected, then returns the port as a connection.
func (l *PortListener) Accept() (net.Conn, error) {
	select {
	case <-l.free:
	case <-l.ctx.Done():
		return nil, net.ErrClosed
	}
	for {
		c, err := l.open()
		if err == nil {
			return c, nil
		}
		if errors.Is(err, net.ErrClosed) {
			l.free <- struct{}{}
			return nil, err
		}
		l.log.Warn("virtio-serial port", "port", l.name, "error", err)
		select {
		case <-time.After(time.Second):
		case <-l.ctx.Done():
			l.free <- struct{}{}
			return nil, net.ErrClosed
		}
	}
}

func (l *PortListener) open() (*portConn, error) {
	dev, err := PortDevice(l.name)
	if err != nil {
		return nil, err
	}
	var fd int
	for {
		// A port opens once at a time (EBUSY while another fd has it).
		fd, err = unix.Open(dev, unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC|unix.O_NOCTTY, 0)
		if err == nil {
			break
		}
		if !errors.Is(err, unix.EBUSY) {
			return nil, fmt.Errorf("open %s: %w", dev, err)
		}
		if err := l.sleep(); err != nil {
			return nil, err
		}
	}
	waited := false
	for {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN | unix.POLLOUT}}
		if _, err := unix.Poll(fds, 0); err != nil && !errors.Is(err, unix.EINTR) {
			unix.Close(fd)
			return nil, fmt.Errorf("poll %s: %w", dev, err)
		}
		if fds[0].Revents&unix.POLLHUP == 0 && fds[0].Revents&(unix.POLLIN|unix.POLLOUT) != 0 {
			break
		}
		if !waited {
			l.log.Debug("waiting for the host side of the port", "port", l.name)
			waited = true
		}
		if err := l.sleep(); err != nil {
			unix.Close(fd)
			return nil, err
		}
	}
	f := os.NewFile(uintptr(fd), dev)
	l.log.Debug("host connected", "port", l.name)
	return &portConn{f: f, l: l}, nil
}

func (l *PortListener) sleep() error {
	select {
	case <-time.After(pollInterval):
		return nil
	case <-l.ctx.Done():
		return net.ErrClosed
	}
}

// Close stops Accept; an open connection stays until closed.
func (l *PortListener) Close() error {
	l.cancel()
	return nil
}

// Addr names the port.
func (l *PortListener) Addr() net.Addr { return portAddr(l.name) }

type portAddr string

func (a portAddr) Network() string { return "virtio-serial" }
func (a portAddr) String() string  { return string(a) }

// portConn is the open port. os.File gives it deadlines (the port is
// pollable); EOF means the host disconnected.
type portConn struct {
	f    *os.File
	l    *PortListener
	once sync.Once
}

func (c *portConn) Read(b []byte) (int, error) {
	n, err := c.f.Read(b)
	if n == 0 && err == nil && len(b) > 0 {
		err = io.EOF
	}
	return n, err
}

func (c *portConn) Write(b []byte) (int, error) { return c.f.Write(b) }

func (c *portConn) Close() error {
	var err error
	c.once.Do(func() {
		err = c.f.Close()
		c.l.log.Debug("port connection closed", "port", c.l.name)
		c.l.free <- struct{}{}
	})
	return err
}

func (c *portConn) LocalAddr() net.Addr                { return portAddr(c.l.name) }
func (c *portConn) RemoteAddr() net.Addr               { return portAddr("host") }
func (c *portConn) SetDeadline(t time.Time) error      { return c.f.SetDeadline(t) }
func (c *portConn) SetReadDeadline(t time.Time) error  { return c.f.SetReadDeadline(t) }
func (c *portConn) SetWriteDeadline(t time.Time) error { return c.f.SetWriteDeadline(t) }
