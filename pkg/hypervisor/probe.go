package hypervisor

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// The acceleration probe: KVM is used only where /dev/kvm opens and a real
// boot of the kernel under KVM (no initrd, no root: the kernel runs its
// whole boot up to mounting the root file system, panics, and QEMU exits
// with -no-reboot) ends with "Kernel panic" on its console within
// ProbeTimeout. Anything else (QEMU refusing KVM, an emulation failure, a
// hang: all seen on nested PVM /dev/kvm devices) means TCG, with a warning.
// Results are kept per kernel hash for the life of the process and in
// Options.CacheDir.

const defaultProbeTimeout = 20 * time.Second

// probeResult is a cached probe outcome.
type probeResult struct {
	Accel    Accel     `json:"accel"`
	Warning  string    `json:"warning,omitempty"`
	Kernel   string    `json:"kernel"`
	ProbedAt time.Time `json:"probed_at"`
	// Host names what the verdict depends on besides the kernel: the host
	// kernel and the QEMU binary. A cached verdict for another host is
	// probed again.
	Host string `json:"host"`
}

// probeHost is probeResult.Host for this host and QEMU binary.
func probeHost(bin string) string {
	var u unix.Utsname
	_ = unix.Uname(&u)
	h := unix.ByteSliceToString(u.Release[:])
	if fi, err := os.Stat(bin); err == nil {
		h += fmt.Sprintf(" %s %d %d", bin, fi.Size(), fi.ModTime().Unix())
	}
	return h
}

var (
	// probeMu serializes probes: one at a time per process.
	probeMu    sync.Mutex
	probeCache = map[string]probeResult{}
)

// kvmDevice is opened to see whether KVM is there at all.
var kvmDevice = "/dev/kvm"

// probe picks the accelerator for kernel.
func (q *QEMU) probe(ctx context.Context, bin, kernel string) (Accel, string) {
	f, err := os.OpenFile(kvmDevice, os.O_RDWR, 0)
	if err != nil {
		return AccelTCG, fmt.Sprintf("KVM unavailable (%v): running under TCG, much slower", err)
	}
	f.Close()
	sum, err := fileHash(kernel)
	if err != nil {
		return AccelTCG, fmt.Sprintf("KVM not probed (%v): running under TCG, much slower", err)
	}
	probeMu.Lock()
	defer probeMu.Unlock()
	if r, ok := probeCache[sum]; ok {
		return r.Accel, r.Warning
	}
	cacheFile := ""
	if q.opts.CacheDir != "" && os.MkdirAll(q.opts.CacheDir, 0o700) == nil {
		cacheFile = filepath.Join(q.opts.CacheDir, "accel-"+sum[:16]+".json")
		if b, err := os.ReadFile(cacheFile); err == nil {
			var r probeResult
			if json.Unmarshal(b, &r) == nil && (r.Accel == AccelKVM || r.Accel == AccelTCG) && r.Host == probeHost(bin) {
				probeCache[sum] = r
				return r.Accel, r.Warning
			}
		}
	}
	r := probeResult{Accel: AccelKVM, Kernel: kernel, ProbedAt: time.Now().UTC(), Host: probeHost(bin)}
	if err := q.kvmBoot(ctx, bin, kernel); err != nil {
		if ctx.Err() != nil {
			// Not a verdict on KVM: do not cache.
			return AccelTCG, fmt.Sprintf("KVM probe interrupted (%v): running under TCG, much slower", err)
		}
		r.Accel = AccelTCG
		r.Warning = fmt.Sprintf("KVM cannot boot %s (%v): running under TCG, much slower", kernel, err)
	}
	probeCache[sum] = r
	if cacheFile != "" {
		if b, err := json.Marshal(r); err == nil {
			_ = writeFileAtomic(cacheFile, b)
		}
	}
	return r.Accel, r.Warning
}

// kvmBoot boots kernel under KVM until it panics for want of a root file
// system.
func (q *QEMU) kvmBoot(ctx context.Context, bin, kernel string) error {
	dir, err := os.MkdirTemp(q.opts.CacheDir, ".kvm-probe-")
	if err != nil {
		return err
	}
	defer func() { _ = os.RemoveAll(dir) }()
	timeout := q.opts.ProbeTimeout
	if timeout <= 0 {
		timeout = defaultProbeTimeout
	}
	pctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	console := filepath.Join(dir, "console.log")
	m := machineFor(AccelKVM)
	cmd := exec.CommandContext(pctx, bin,
		"-M", m.name, "-accel", "kvm", "-cpu", m.cpu, "-m", "256M", "-smp", "1",
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-chardev", "file,id=console,path="+qemuOpt(console), "-serial", "chardev:console",
		"-kernel", kernel,
		"-append", "console=ttyS0 panic=-1 root=/dev/aurae-kvm-probe")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.WaitDelay = 2 * time.Second
	err = cmd.Run()
	out, _ := os.ReadFile(console)
	switch {
	case pctx.Err() != nil:
		return fmt.Errorf("no panic within %s (%d bytes of console)", timeout, len(out))
	case err != nil:
		msg := strings.ReplaceAll(string(bytes.TrimSpace(lastBytes(stderr.Bytes(), 300))), "\n", " / ")
		return fmt.Errorf("qemu: %w: %s", err, msg)
	case !bytes.Contains(out, []byte("Kernel panic")):
		return fmt.Errorf("the guest stopped before its root mount (%d bytes of console)", len(out))
	}
	return nil
}

func lastBytes(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

func fileHash(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// writeFileAtomic writes a file through a temp file and a rename.
func writeFileAtomic(path string, b []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+"-*")
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		_ = os.Remove(f.Name())
		return err
	}
	if err := f.Close(); err != nil {
		_ = os.Remove(f.Name())
		return err
	}
	if err := os.Rename(f.Name(), path); err != nil {
		_ = os.Remove(f.Name())
		return err
	}
	return nil
}
