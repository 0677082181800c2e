package hypervisor

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/aurae-runtime/aurae-cri/internal/linux"
)

// QEMU does not run as root (when VMConfig.UID is set): it cannot open
// anything it was not handed. auraed opens, as root, what QEMU needs and
// passes it as inherited descriptors, in this order from fd 3:
//
//	3            the VM's dir (QEMU's sockets, pid file and console log are
//	             made below /proc/self/fd/3, which needs no search
//	             permission on the dir's parents)
//	4            the kernel
//	5            the initramfs, when there is one (and no root image), or
//	             the root image (read-only, mapped by QEMU)
//	then         one tap device per NIC (made by auraed in the VM's network
//	             namespace; it goes when QEMU closes it)
//	then         one file per drive (QEMU's fd set N+1 for drive N)
//	then         a clone's incoming state (a VM template's, read-only)
type fdLayout struct {
	kernel, initrd int // initrd 0: none
	rootImage      int // 0: none
	taps, drives   []int
	incoming       int // 0: none
}

const dirFD = 3

func layoutFor(cfg VMConfig) fdLayout {
	l := fdLayout{kernel: dirFD + 1}
	next := l.kernel + 1
	switch {
	case cfg.RootImage != "":
		l.rootImage, next = next, next+1
	case cfg.Initrd != "":
		l.initrd, next = next, next+1
	}
	for range cfg.NICs {
		l.taps, next = append(l.taps, next), next+1
	}
	for range cfg.Drives {
		l.drives, next = append(l.drives, next), next+1
	}
	if cfg.tmpl != nil && cfg.tmpl.incoming != nil {
		l.incoming = next
	}
	return l
}

// inDir is name below the VM's dir as QEMU reaches it.
func inDir(name string) string { return "/proc/self/fd/" + strconv.Itoa(dirFD) + "/" + name }

func fdPath(fd int) string { return "/proc/self/fd/" + strconv.Itoa(fd) }

// openFiles opens what layoutFor lists for cfg; the caller closes them
// once QEMU started.
func openFiles(cfg VMConfig) (_ []*os.File, retErr error) {
	var files []*os.File
	defer func() {
		if retErr != nil {
			closeAll(files)
		}
	}()
	open := func(path string, flags int) error {
		f, err := os.OpenFile(path, flags|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		files = append(files, f)
		return nil
	}
	if err := open(cfg.Dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW); err != nil {
		return nil, fmt.Errorf("vm dir: %w", err)
	}
	if err := open(cfg.Kernel, unix.O_RDONLY); err != nil {
		return nil, fmt.Errorf("kernel: %w", err)
	}
	switch {
	case cfg.RootImage != "":
		if err := open(cfg.RootImage, unix.O_RDONLY); err != nil {
			return nil, fmt.Errorf("root image: %w", err)
		}
	case cfg.Initrd != "":
		if err := open(cfg.Initrd, unix.O_RDONLY); err != nil {
			return nil, fmt.Errorf("initramfs: %w", err)
		}
	}
	for _, n := range cfg.NICs {
		tap, err := openTapIn(cfg.NetNSPath, n.Tap)
		if err != nil {
			return nil, err
		}
		files = append(files, tap)
	}
	for _, d := range cfg.Drives {
		flags := unix.O_RDWR
		if d.ReadOnly {
			flags = unix.O_RDONLY
		}
		if err := open(d.Path, flags); err != nil {
			return nil, fmt.Errorf("drive %s: %w", d.ID, err)
		}
	}
	if cfg.tmpl != nil && cfg.tmpl.incoming != nil {
		// Its own descriptor (StartFromTemplate's dup), closed with the others.
		files = append(files, cfg.tmpl.incoming)
	}
	return files, nil
}

func closeAll(files []*os.File) {
	for _, f := range files {
		_ = f.Close()
	}
}

// ifReq is struct ifreq as TUNSETIFF reads it.
type ifReq struct {
	name  [unix.IFNAMSIZ]byte
	flags uint16
	_     [22]byte
}

// openTap makes the tap device name in the calling thread's network
// namespace (with virtio-net headers, as QEMU's vnet_hdr wants) and
// returns its queue. The device goes when the last descriptor closes.
func openTap(name string) (*os.File, error) {
	if len(name) == 0 || len(name) >= unix.IFNAMSIZ {
		return nil, fmt.Errorf("tap name %q: want 1 to %d bytes", name, unix.IFNAMSIZ-1)
	}
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	var req ifReq
	copy(req.name[:], name)
	req.flags = unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.TUNSETIFF, uintptr(unsafe.Pointer(&req))); errno != 0 {
		unix.Close(fd)
		return nil, fmt.Errorf("TUNSETIFF: %w", errno)
	}
	return os.NewFile(uintptr(fd), "tap:"+name), nil
}

// giveDir hands the VM's dir, and the sockets of its shares' virtiofsds,
// to the user QEMU runs as; nothing else of the host is its.
func giveDir(dir string, shares int, uid, gid uint32) error {
	if err := os.Chown(dir, int(uid), int(gid)); err != nil {
		return fmt.Errorf("vm dir: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return fmt.Errorf("vm dir: %w", err)
	}
	for i := range shares {
		if err := os.Lchown(filepath.Join(dir, fmt.Sprintf(virtiofsdSocket, i)), int(uid), int(gid)); err != nil {
			return fmt.Errorf("virtiofsd socket: %w", err)
		}
	}
	return nil
}

// kvmGroups is the supplementary group QEMU needs under KVM: the group
// of /dev/kvm.
func kvmGroups(a Accel) []uint32 {
	if a != AccelKVM {
		return nil
	}
	var st unix.Stat_t
	if err := unix.Stat("/dev/kvm", &st); err != nil {
		return nil
	}
	return []uint32{st.Gid}
}

// openTapIn opens the tap called name in the network namespace at netns.
func openTapIn(netns, name string) (*os.File, error) {
	var tap *os.File
	err := linux.InNetNS(netns, func() error {
		var err error
		tap, err = openTap(name)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("tap %s: %w", name, err)
	}
	return tap, nil
}
