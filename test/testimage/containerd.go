package testimage

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"

	"github.com/aurae-runtime/aurae-cri/pkg/containerdproc"
)

// StartContainerd starts a child containerd (through containerdproc) in a
// fresh temporary state dir and, when the test ends, stops it, unmounts
// whatever is left mounted under the dir and removes it. It skips the test
// when not root or when no containerd binary is installed
// (apt-get install containerd).
func StartContainerd(t testing.TB) *containerdproc.Proc {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: containerd and overlay mounts")
	}
	if _, err := exec.LookPath(containerdproc.DefaultBinary); err != nil {
		t.Skip("no containerd binary on PATH (apt-get install containerd)")
	}
	// Not t.TempDir: the socket path must stay under 108 bytes.
	dir, err := os.MkdirTemp("", "aurae-ctd-")
	if err != nil {
		t.Fatalf("state dir: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p, err := containerdproc.Ensure(ctx, containerdproc.Config{StateDir: dir, Logger: Logger(t)})
	if err != nil {
		if rerr := RemoveStateDir(dir); rerr != nil {
			t.Logf("clean %s: %v", dir, rerr)
		}
		t.Fatalf("start containerd: %v", err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("stop containerd: %v", err)
		}
		if t.Failed() {
			if b, err := os.ReadFile(p.LogPath()); err == nil {
				t.Logf("containerd log:\n%s", tailBytes(b, 8192))
			}
		}
		if err := RemoveStateDir(dir); err != nil {
			t.Errorf("clean containerd state: %v", err)
		}
	})
	return p
}

// RemoveStateDir unmounts every mount under dir, deepest first, and removes
// dir.
func RemoveStateDir(dir string) error {
	if err := UnmountUnder(dir); err != nil {
		return err
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("remove %s: %w", dir, err)
	}
	return nil
}

// UnmountUnder lazily unmounts every mount at or below dir, deepest first.
func UnmountUnder(dir string) error {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	mounts, err := mountinfo.GetMounts(mountinfo.PrefixFilter(dir))
	if err != nil {
		return fmt.Errorf("read mounts under %s: %w", dir, err)
	}
	sort.Slice(mounts, func(i, j int) bool { return len(mounts[i].Mountpoint) > len(mounts[j].Mountpoint) })
	var errs []error
	for _, m := range mounts {
		if err := unix.Unmount(m.Mountpoint, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", m.Mountpoint, err))
		}
	}
	return errors.Join(errs...)
}

func tailBytes(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}
