package guest

import (
	"bytes"
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

// h2Preface starts every HTTP/2 (gRPC) connection a client opens.
var h2Preface = []byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")

// PortListener is a net.Listener over one virtio-serial port: it yields one
// connection (a session) at a time, once the host side is connected.
//
// The port stays open for good (QEMU does not read the host's unix socket
// while the guest has the port closed, so a host that connects before the
// guest serves loses nothing). A session ends when the host disconnects
// (reads return EOF) or when a new HTTP/2 client preface shows up in its
// stream: the host reconnected before the guest saw the disconnect (the
// port's "closed" and "open" events can both be handled before the guest
// reads again). The bytes from that preface on start the next session, and a
// session drops whatever comes before the first preface, so that every
// session is one whole HTTP/2 connection of one host client.
type PortListener struct {
	name string
	log  *slog.Logger

	ctx    context.Context
	cancel context.CancelFunc
	// free holds a token while no session is open.
	free chan struct{}

	f     *os.File // the port, opened by the first Accept
	carry []byte   // read past the end of the last session: the next one's start
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

// Accept waits until the previous session is closed and the host side is
// connected, then returns the next session.
func (l *PortListener) Accept() (net.Conn, error) {
	select {
	case <-l.free:
	case <-l.ctx.Done():
		return nil, net.ErrClosed
	}
	if l.ctx.Err() != nil {
		l.free <- struct{}{}
		return nil, net.ErrClosed
	}
	for {
		err := l.open()
		if err == nil && len(l.carry) == 0 {
			err = l.waitHost()
		}
		if err == nil {
			c := &portConn{l: l, syncing: true, pending: l.carry}
			l.carry = nil
			l.log.Debug("port session", "port", l.name)
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

// open opens the port once.
func (l *PortListener) open() error {
	if l.f != nil {
		return nil
	}
	dev, err := PortDevice(l.name)
	if err != nil {
		return err
	}
	for {
		// A port opens once at a time (EBUSY while another fd has it).
		fd, err := unix.Open(dev, unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC|unix.O_NOCTTY, 0)
		if err == nil {
			l.f = os.NewFile(uintptr(fd), dev)
			return nil
		}
		if !errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("open %s: %w", dev, err)
		}
		if err := l.sleep(); err != nil {
			return err
		}
	}
}

// waitHost waits until the host side is connected (the port no longer
// polls as POLLHUP).
func (l *PortListener) waitHost() error {
	rc, err := l.f.SyscallConn()
	if err != nil {
		return err
	}
	waited := false
	for {
		var revents int16
		var perr error
		if err := rc.Control(func(fd uintptr) {
			fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN | unix.POLLOUT}}
			_, perr = unix.Poll(fds, 0)
			revents = fds[0].Revents
		}); err != nil {
			return err
		}
		if perr != nil && !errors.Is(perr, unix.EINTR) {
			return fmt.Errorf("poll port %s: %w", l.name, perr)
		}
		if revents&unix.POLLHUP == 0 && revents&(unix.POLLIN|unix.POLLOUT) != 0 {
			if waited {
				l.log.Debug("host connected", "port", l.name)
			}
			return nil
		}
		if !waited {
			l.log.Debug("waiting for the host side of the port", "port", l.name)
			waited = true
		}
		if err := l.sleep(); err != nil {
			return err
		}
	}
}

func (l *PortListener) sleep() error {
	select {
	case <-time.After(pollInterval):
		return nil
	case <-l.ctx.Done():
		return net.ErrClosed
	}
}

// Close stops Accept; an open session stays until closed. The port itself
// is closed with the process.
func (l *PortListener) Close() error {
	l.cancel()
	return nil
}

// Addr names the port.
func (l *PortListener) Addr() net.Addr { return portAddr(l.name) }

type portAddr string

func (a portAddr) Network() string { return "virtio-serial" }
func (a portAddr) String() string  { return string(a) }

// portConn is one session on the port.
type portConn struct {
	l *PortListener

	rmu     sync.Mutex // one Read at a time; held by Close to end a blocked one
	syncing bool       // before the first HTTP/2 preface
	acc     []byte     // while syncing: bytes that may hold the preface
	pending []byte     // raw bytes to examine before reading the port again
	ready   []byte     // examined bytes for the caller
	eof     bool       // the host disconnected, or a new preface ended this session
	// sentGoAway: bytes were dropped and the host was told to reconnect.
	sentGoAway bool
	buf        [32 << 10]byte

	wmu    sync.Mutex
	closed bool // under both rmu and wmu
	once   sync.Once
}

func (c *portConn) Read(b []byte) (int, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	if c.closed {
		return 0, net.ErrClosed
	}
	for len(c.ready) == 0 {
		if c.eof {
			return 0, io.EOF
		}
		raw := c.pending
		c.pending = nil
		if len(raw) == 0 {
			n, err := c.l.f.Read(c.buf[:])
			if n == 0 && (err == nil || errors.Is(err, io.EOF)) {
				c.eof = true
				return 0, io.EOF
			}
			if err != nil {
				return 0, err
			}
			raw = append([]byte(nil), c.buf[:n]...)
		}
		c.examine(raw)
	}
	n := copy(b, c.ready)
	c.ready = c.ready[n:]
	return n, nil
}

// examine moves raw bytes to ready: before the first preface they are
// dropped; a second preface ends the session and starts the next one.
func (c *portConn) examine(raw []byte) {
	from := 0
	if c.syncing {
		c.acc = append(c.acc, raw...)
		i := bytes.Index(c.acc, h2Preface)
		if i < 0 {
			if keep := len(h2Preface) - 1; len(c.acc) > keep {
				c.l.log.Warn("dropping bytes before the HTTP/2 preface", "port", c.l.name, "bytes", len(c.acc)-keep)
				c.acc = append([]byte(nil), c.acc[len(c.acc)-keep:]...)
				c.goAway()
			}
			return
		}
		if i > 0 {
			c.l.log.Warn("dropping bytes before the HTTP/2 preface", "port", c.l.name, "bytes", i)
		}
		raw, c.acc, c.syncing = c.acc[i:], nil, false
		from = len(h2Preface)
	}
	if j := bytes.Index(raw[from:], h2Preface); j >= 0 {
		cut := from + j
		c.l.log.Debug("the host reconnected: a new session starts", "port", c.l.name)
		c.ready = append(c.ready, raw[:cut]...)
		c.l.carry = append([]byte(nil), raw[cut:]...)
		c.eof = true
		return
	}
	c.ready = append(c.ready, raw...)
}

// h2GoAway is an HTTP/2 GOAWAY frame (last stream 0, PROTOCOL_ERROR).
var h2GoAway = []byte{0, 0, 8, 0x7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}

// goAway tells a host client whose connection began before this session
// (the serving auraed was restarted under it) to drop that connection and
// dial again: a new connection starts with a preface. Once per session.
func (c *portConn) goAway() {
	if c.sentGoAway {
		return
	}
	c.sentGoAway = true
	c.l.log.Info("the host client's connection predates this session: sending GOAWAY", "port", c.l.name)
	go func() {
		c.wmu.Lock()
		defer c.wmu.Unlock()
		if !c.closed {
			_, _ = c.l.f.Write(h2GoAway)
		}
	}()
}

func (c *portConn) Write(b []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.closed {
		return 0, net.ErrClosed
	}
	return c.l.f.Write(b)
}

// Close ends the session: a Read or Write still blocked on the port is cut
// short (so that it cannot take or send bytes of the next session), then
// the next Accept may start.
func (c *portConn) Close() error {
	c.once.Do(func() {
		_ = c.l.f.SetDeadline(time.Unix(1, 0))
		c.rmu.Lock()
		c.wmu.Lock()
		c.closed = true
		c.wmu.Unlock()
		c.rmu.Unlock()
		_ = c.l.f.SetDeadline(time.Time{})
		c.l.log.Debug("port session closed", "port", c.l.name)
		c.l.free <- struct{}{}
	})
	return nil
}

func (c *portConn) LocalAddr() net.Addr                { return portAddr(c.l.name) }
func (c *portConn) RemoteAddr() net.Addr               { return portAddr("host") }
func (c *portConn) SetDeadline(t time.Time) error      { return c.l.f.SetDeadline(t) }
func (c *portConn) SetReadDeadline(t time.Time) error  { return c.l.f.SetReadDeadline(t) }
func (c *portConn) SetWriteDeadline(t time.Time) error { return c.l.f.SetWriteDeadline(t) }
