package guest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"time"
	"unsafe"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	guestv0 "github.com/aurae-runtime/aurae-cri/api/guest/v0"
)

// Bounds of a Configure request.
const (
	minEntropy  = 32
	maxEntropy  = 512
	maxShares   = 8
	maxNICs     = 8
	maxHostname = 64
	deviceWait  = 10 * time.Second
	devicePoll  = 10 * time.Millisecond
)

// ConfigureService serves aurae.guest.v0.GuestService: the per-VM setup of
// a guest restored from a VM template (see api/guest/v0/guest.proto).
type ConfigureService struct {
	guestv0.UnimplementedGuestServiceServer

	log *slog.Logger
	// mu: one Configure at a time.
	mu sync.Mutex
	// sys is the root of /sys (tests point it elsewhere).
	sys string
}

// NewConfigureService returns the guest service.
func NewConfigureService(log *slog.Logger) *ConfigureService {
	return &ConfigureService{log: log, sys: "/sys"}
}

var _ guestv0.GuestServiceServer = (*ConfigureService)(nil)

// Configure implements guestv0.GuestServiceServer.
func (s *ConfigureService) Configure(ctx context.Context, req *guestv0.GuestServiceConfigureRequest) (*guestv0.GuestServiceConfigureResponse, error) {
	if err := validateConfigure(req); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	t0 := time.Now()
	if err := setClock(req.GetUnixTimeNanos()); err != nil {
		return nil, fmt.Errorf("set the clock: %w", err)
	}
	if err := reseed(req.GetEntropy()); err != nil {
		return nil, fmt.Errorf("reseed the random generator: %w", err)
	}
	if h := req.GetHostname(); h != "" {
		if err := unix.Sethostname([]byte(h)); err != nil {
			return nil, fmt.Errorf("set hostname: %w", err)
		}
	}
	if req.GetRescanPci() {
		if err := os.WriteFile(filepath.Join(s.sys, "bus", "pci", "rescan"), []byte("1"), 0); err != nil {
			return nil, fmt.Errorf("rescan pci: %w", err)
		}
	}
	wctx, cancel := context.WithTimeout(ctx, deviceWait)
	defer cancel()
	for _, m := range req.GetVirtiofs() {
		if err := s.mountShare(wctx, VirtioFSMount{Tag: m.GetTag(), Path: m.GetPath()}); err != nil {
			return nil, err
		}
	}
	if n := int(req.GetNetworkInterfaces()); n > 0 {
		if err := s.waitNICs(wctx, n); err != nil {
			return nil, err
		}
	}
	now := time.Now()
	s.log.InfoContext(ctx, "guest configured", "hostname", req.GetHostname(), "shares", len(req.GetVirtiofs()),
		"nics", req.GetNetworkInterfaces(), "took", now.Sub(t0).Round(time.Millisecond).String())
	return &guestv0.GuestServiceConfigureResponse{UnixTimeNanos: now.UnixNano()}, nil
}

// validateConfigure checks a request against its bounds.
func validateConfigure(req *guestv0.GuestServiceConfigureRequest) error {
	if req.GetUnixTimeNanos() <= 0 {
		return fmt.Errorf("unix_time_nanos %d: want a time after the epoch: %w", req.GetUnixTimeNanos(), errdefs.ErrInvalidArgument)
	}
	if n := len(req.GetEntropy()); n < minEntropy || n > maxEntropy {
		return fmt.Errorf("entropy: %d bytes, want %d to %d: %w", n, minEntropy, maxEntropy, errdefs.ErrInvalidArgument)
	}
	if h := req.GetHostname(); h != "" && !validHostname(h) {
		return fmt.Errorf("hostname %q: want a DNS name of at most %d bytes: %w", h, maxHostname, errdefs.ErrInvalidArgument)
	}
	if len(req.GetVirtiofs()) > maxShares {
		return fmt.Errorf("virtiofs: %d shares, at most %d: %w", len(req.GetVirtiofs()), maxShares, errdefs.ErrInvalidArgument)
	}
	for i, m := range req.GetVirtiofs() {
		if !validTag(m.GetTag()) {
			return fmt.Errorf("virtiofs[%d].tag %q: want 1 to 36 letters, digits, '-', '_' or '.': %w", i, m.GetTag(), errdefs.ErrInvalidArgument)
		}
		if p := m.GetPath(); !path.IsAbs(p) || path.Clean(p) != p || p == "/" {
			return fmt.Errorf("virtiofs[%d].path %q: want a clean absolute path other than /: %w", i, p, errdefs.ErrInvalidArgument)
		}
	}
	if req.GetNetworkInterfaces() > maxNICs {
		return fmt.Errorf("network_interfaces %d: at most %d: %w", req.GetNetworkInterfaces(), maxNICs, errdefs.ErrInvalidArgument)
	}
	return nil
}

func validHostname(h string) bool {
	if len(h) > maxHostname {
		return false
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, c := range label {
			if !isAlnum(c) && c != '-' {
				return false
			}
		}
	}
	return true
}

// validTag: a virtio-fs tag is at most 36 bytes (the device's config).
func validTag(t string) bool {
	if t == "" || len(t) > 36 {
		return false
	}
	for _, c := range t {
		if !isAlnum(c) && c != '-' && c != '_' && c != '.' {
			return false
		}
	}
	return true
}

func isAlnum(c rune) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

// setClock sets the wall clock (CLOCK_REALTIME).
func setClock(ns int64) error {
	ts := unix.NsecToTimespec(ns)
	return unix.ClockSettime(unix.CLOCK_REALTIME, &ts)
}

// randPoolInfo is struct rand_pool_info with its buffer (linux/random.h).
type randPoolInfo struct {
	entropyCount int32
	bufSize      int32
	buf          [maxEntropy]byte
}

// reseed credits the host's bytes to the input pool (RNDADDENTROPY), then
// reseeds the CRNG from it (RNDRESEEDCRNG), so that clones of one template
// never share a random stream.
func reseed(entropy []byte) error {
	f, err := os.OpenFile("/dev/urandom", os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	info := randPoolInfo{entropyCount: int32(len(entropy) * 8), bufSize: int32(len(entropy))}
	copy(info.buf[:], entropy)
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.RNDADDENTROPY, uintptr(unsafe.Pointer(&info))); errno != 0 {
		return fmt.Errorf("RNDADDENTROPY: %w", errno)
	}
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.RNDRESEEDCRNG, 0); errno != 0 {
		return fmt.Errorf("RNDRESEEDCRNG: %w", errno)
	}
	return nil
}

// mountShare mounts a virtio-fs share, retrying while its hot-plugged
// device is being probed (the mount fails with ENOENT until the tag
// exists).
func (s *ConfigureService) mountShare(ctx context.Context, m VirtioFSMount) error {
	var last error
	for {
		last = MountVirtioFS(m)
		if last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("virtio-fs share %q did not appear: %w: %w", m.Tag, last, errdefs.ErrUnavailable)
		case <-time.After(devicePoll):
		}
	}
}

// waitNICs waits until n network interfaces besides lo exist.
func (s *ConfigureService) waitNICs(ctx context.Context, n int) error {
	for {
		ents, err := os.ReadDir(filepath.Join(s.sys, "class", "net"))
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("network interfaces: %w", err)
		}
		have := 0
		for _, e := range ents {
			if e.Name() != "lo" {
				have++
			}
		}
		if have >= n {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%d of %d network interfaces appeared: %w", have, n, errdefs.ErrUnavailable)
		case <-time.After(devicePoll):
		}
	}
}
