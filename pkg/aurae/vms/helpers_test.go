package vms

import (
	"bytes"
	"compress/gzip"
	"context"
	"debug/elf"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/aurae-runtime/aurae-cri/pkg/hypervisor"
)

// guest is what a root test boots.
type guest struct {
	kernel string
	// initramfs is set for the busybox guest; the guest image's sits beside
	// its kernel.
	initramfs string
	// image: the guest image of `make vm-image`, whose auraed answers
	// Discover on the host channel.
	image bool
}

const guestMarker = "aurae-test-guest: init up"

// needGuest returns a guest to boot, or skips with the reason.
func needGuest(t *testing.T) guest {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	if _, err := exec.LookPath(hypervisor.QEMUBinary); err != nil {
		t.Skipf("%s not installed (apt-get install qemu-system-x86)", hypervisor.QEMUBinary)
	}
	dir := os.Getenv("AURAE_VM_IMAGE_DIR")
	if dir == "" {
		dir = "/var/lib/aurae/vm"
	}
	k, i := filepath.Join(dir, "vmlinux"), filepath.Join(dir, initramfsName)
	if fileExists(k) && fileExists(i) {
		return guest{kernel: k, image: true}
	}
	k = os.Getenv("AURAE_TEST_KERNEL")
	if k == "" || !fileExists(k) {
		t.Skipf("no guest: neither %s nor AURAE_TEST_KERNEL (a bzImage or vmlinux, e.g. from `apt-get download linux-image-6.1.0-*-amd64` + dpkg -x)", k)
	}
	return guest{kernel: k, initramfs: busyboxInitramfs(t)}
}

// busyboxInitramfs builds an initramfs whose /init (busybox sh) prints
// guestMarker and sleeps.
func busyboxInitramfs(t *testing.T) string {
	t.Helper()
	bb, err := exec.LookPath("busybox")
	if err != nil {
		t.Skip("busybox not installed (apt-get install busybox-static)")
	}
	if f, err := elf.Open(bb); err == nil {
		static := true
		for _, p := range f.Progs {
			static = static && p.Type != elf.PT_INTERP
		}
		_ = f.Close()
		if !static {
			t.Skipf("%s is not static (apt-get install busybox-static)", bb)
		}
	}
	bin, err := os.ReadFile(bb)
	if err != nil {
		t.Fatal(err)
	}
	init := "#!/bin/busybox sh\n/bin/busybox mount -t proc proc /proc\necho '" + guestMarker + "'\nexec /bin/busybox sleep 2147483647\n"
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	w := &cpioWriter{w: zw}
	w.entry("dev", 0o040755, 0, nil)
	w.entry("dev/console", 0o020600, 5<<8|1, nil)
	w.entry("proc", 0o040755, 0, nil)
	w.entry("bin", 0o040755, 0, nil)
	w.entry("bin/busybox", 0o100755, 0, bin)
	w.entry("init", 0o100755, 0, []byte(init))
	w.entry("TRAILER!!!", 0, 0, nil)
	if w.err != nil {
		t.Fatal(w.err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "initramfs.cpio.gz")
	if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// cpioWriter writes the "newc" cpio format the kernel unpacks.
type cpioWriter struct {
	w   io.Writer
	n   int64
	ino int
	err error
}

func (c *cpioWriter) write(b []byte) {
	if c.err != nil {
		return
	}
	_, c.err = c.w.Write(b)
	c.n += int64(len(b))
	if pad := (4 - c.n%4) % 4; pad != 0 && c.err == nil {
		_, c.err = c.w.Write(make([]byte, pad))
		c.n += pad
	}
}

func (c *cpioWriter) entry(name string, mode uint32, rdev uint32, data []byte) {
	c.ino++
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		c.ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev>>8, rdev&0xff, len(name)+1, 0)
	c.write([]byte(hdr + name + "\x00"))
	if len(data) > 0 {
		c.write(data)
	}
}

// newTestService opens a service on dir for guest g.
func newTestService(t *testing.T, dir string, g guest) *Service {
	t.Helper()
	s, err := NewService(context.Background(), Config{
		StateDir:    dir,
		Initramfs:   g.initramfs,
		BootTimeout: 90 * time.Second,
		StopTimeout: 3 * time.Second,
		Logger:      slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(b)))
	return len(b), nil
}

// hypervisorsOf lists the pids of processes whose command line mentions
// dir: the QEMUs of a state dir.
func hypervisorsOf(dir string) []int {
	var pids []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		// A hypervisor inherits its VM's dir as fd 3 (see the
		// hypervisor package's qemu_files.go).
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || !bytes.Contains(b, []byte("-qmp")) {
			continue
		}
		if d, err := os.Readlink(filepath.Join("/proc", e.Name(), "fd", "3")); err != nil || (d != dir && !strings.HasPrefix(d, dir+"/")) {
			continue
		}
		if st, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat")); err == nil {
			if i := bytes.LastIndexByte(st, ')'); i > 0 && bytes.HasPrefix(bytes.TrimSpace(st[i+1:]), []byte("Z")) {
				continue // exited, waiting for its reaper
			}
		}
		pids = append(pids, pid)
	}
	return pids
}

// noHypervisorLeft fails (and kills) when a QEMU of dir still runs.
func noHypervisorLeft(t *testing.T, dir string) {
	t.Helper()
	t.Cleanup(func() {
		if pids := hypervisorsOf(dir); len(pids) > 0 {
			t.Errorf("hypervisors left running: %v", pids)
			for _, p := range pids {
				_ = syscall.Kill(p, syscall.SIGKILL)
			}
		}
	})
}
