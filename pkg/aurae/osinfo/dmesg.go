package osinfo

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	commonapi "github.com/aurae-runtime/aurae-cri/api/common"
	osapi "github.com/aurae-runtime/aurae-cri/api/os"
)

// kmsgPath is the kernel's log device: one record per read.
const kmsgPath = "/dev/kmsg"

// kmsgRecordMax is the largest record a read returns (the kernel refuses
// a smaller buffer with EINVAL; its records are below 1 KiB plus the
// dictionary).
const kmsgRecordMax = 16 << 10

var (
	facilities = []string{"kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron", "authpriv", "ftp"}
	levels     = []string{"emerg", "alert", "crit", "err", "warning", "notice", "info", "debug"}
)

// readKmsg sends the kernel's log records, one per message: from the
// oldest the kernel still has, or (tail) from the end; with follow it then
// waits for new ones until ctx ends. The records wait in the kernel's ring
// for a slow reader, not in auraed: when the ring overwrote some before
// they were read, a record saying so is sent instead.
func readKmsg(ctx context.Context, req *osapi.DmesgRequest, send func(*commonapi.Data) error) error {
	f, err := os.OpenFile(kmsgPath, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", kmsgPath, err)
	}
	defer f.Close()
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	if req.GetTail() {
		var seekErr error
		if err := rc.Control(func(fd uintptr) { _, seekErr = unix.Seek(int(fd), 0, unix.SEEK_END) }); err != nil {
			return err
		}
		if seekErr != nil {
			return fmt.Errorf("seek to the end of %s: %w", kmsgPath, seekErr)
		}
	}
	// A follow waits in the runtime's poller; the deadline ends the wait
	// when the call ends.
	stop := context.AfterFunc(ctx, func() { _ = f.SetReadDeadline(time.Now()) })
	defer stop()
	buf := make([]byte, kmsgRecordMax)
	for {
		var n int
		var readErr error
		err := rc.Read(func(fd uintptr) bool {
			n, readErr = unix.Read(int(fd), buf)
			return !errors.Is(readErr, unix.EAGAIN) || !req.GetFollow()
		})
		switch {
		case err != nil:
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("read %s: %w", kmsgPath, err)
		case errors.Is(readErr, unix.EAGAIN):
			return nil // no follow: every record was read
		case errors.Is(readErr, unix.EPIPE):
			if err := send(&commonapi.Data{Bytes: []byte("auraed: kernel log records were overwritten before they were read\n")}); err != nil {
				return err
			}
			continue
		case errors.Is(readErr, unix.EINTR):
			continue
		case readErr != nil:
			return fmt.Errorf("read %s: %w", kmsgPath, readErr)
		}
		if line, ok := formatRecord(buf[:n]); ok {
			if err := send(&commonapi.Data{Bytes: line}); err != nil {
				return err
			}
		}
	}
}

// formatRecord turns a /dev/kmsg record ("pri,seq,usec,flags[,...];text\n"
// and dictionary lines) into "facility.level [seconds.micros] text\n", as
// dmesg shows it.
func formatRecord(rec []byte) ([]byte, bool) {
	head, text, ok := bytes.Cut(rec, []byte(";"))
	if !ok {
		return nil, false
	}
	text, _, _ = bytes.Cut(text, []byte("\n"))
	fields := bytes.Split(head, []byte(","))
	if len(fields) < 3 {
		return nil, false
	}
	pri, err1 := strconv.Atoi(string(fields[0]))
	usec, err2 := strconv.ParseUint(string(fields[2]), 10, 64)
	if err1 != nil || err2 != nil || pri < 0 {
		return nil, false
	}
	facility := "local" + strconv.Itoa(pri>>3-16)
	if pri>>3 < len(facilities) {
		facility = facilities[pri>>3]
	}
	return fmt.Appendf(nil, "%s.%s [%5d.%06d] %s\n", facility, levels[pri&7], usec/1e6, usec%1e6, text), true
}
