package guest

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestPortSessions drives PortListener over a socketpair standing in for the
// port: bytes before the first HTTP/2 preface are dropped, and a second
// preface (the host reconnected before the guest saw EOF) ends the session
// and starts the next one with it; EOF ends a session too.
func TestPortSessions(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	guestEnd := os.NewFile(uintptr(fds[0]), "guest")
	host := os.NewFile(uintptr(fds[1]), "host")
	defer host.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	l := &PortListener{name: "test", log: slog.New(slog.DiscardHandler), ctx: ctx, cancel: cancel, free: make(chan struct{}, 1), f: guestEnd}
	l.free <- struct{}{}
	defer guestEnd.Close()

	pre := string(h2Preface)
	write := func(s string) {
		t.Helper()
		if _, err := host.Write([]byte(s)); err != nil {
			t.Fatal(err)
		}
	}
	readN := func(c io.Reader, n int) string {
		t.Helper()
		b := make([]byte, n)
		if _, err := io.ReadFull(c, b); err != nil {
			t.Fatal(err)
		}
		return string(b)
	}

	write("stale bytes of an old session" + pre + "one")
	c1, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	if got := readN(c1, len(pre)+3); got != pre+"one" {
		t.Fatalf("session 1 read %q", got)
	}
	if _, err := c1.Write([]byte("answer")); err != nil {
		t.Fatal(err)
	}
	if got := readN(host, 6); got != "answer" {
		t.Fatalf("host read %q", got)
	}
	write("-tail" + pre + "two")
	if got := readN(c1, 5); got != "-tail" {
		t.Fatalf("session 1 read %q", got)
	}
	if _, err := c1.Read(make([]byte, 10)); !errors.Is(err, io.EOF) {
		t.Fatalf("session 1 after a new preface: %v, want EOF", err)
	}

	accepted := make(chan error, 1)
	go func() {
		c2, err := l.Accept()
		if err == nil {
			if got := readN(c2, len(pre)+3); got != pre+"two" {
				err = errors.New("session 2 read " + got)
			}
			_ = c2.Close()
		}
		accepted <- err
	}()
	select {
	case err := <-accepted:
		t.Fatalf("session 2 started before session 1 was closed (%v)", err)
	case <-time.After(100 * time.Millisecond):
	}
	if err := c1.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-accepted; err != nil {
		t.Fatal(err)
	}

	// EOF (the host side went away) ends a session.
	c3, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	write(pre)
	if got := readN(c3, len(pre)); got != pre {
		t.Fatalf("session 3 read %q", got)
	}
	if err := unix.Shutdown(int(host.Fd()), unix.SHUT_WR); err != nil {
		t.Fatal(err)
	}
	if _, err := c3.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Fatalf("session 3 after the host left: %v, want EOF", err)
	}
	_ = c3.Close()
	_ = l.Close()
	if _, err := l.Accept(); err == nil {
		t.Fatal("Accept after Close succeeded")
	}
}
