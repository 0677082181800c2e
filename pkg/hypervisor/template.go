package hypervisor

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// VM templates (QEMU, q35 only). A template is a guest booted once to its
// serving auraed, paused, and saved with QMP `migrate` to a file: its RAM
// (zero pages are not written) and device state. A clone is a QEMU with
// the identical machine started with `-incoming fd:N` reading that file:
// it resumes where the template stopped, in a fraction of a boot.
//
// What cannot be in a template is hot-plugged into the clone before it
// resumes: QEMU 7.2's vhost-user-fs (virtio-fs) device is unmigratable
// (the save and the restore both refuse it), and a NIC's tap is the pod's.
// The template's machine has maxHotplug empty PCIe root ports for them;
// the guest kernel has no PCI hot-plug driver, so the guest finds them by
// a PCI rescan that the host asks for (api/guest/v0: Configure).
//
// The clone's RAM is a copy of the template's, not a shared mapping:
// QEMU loads it from the stream (so that the pod's cgroup is charged for
// it), and the zero pages it allocates on the way are given back before
// the guest runs (template_ram.go).
// vhost-user (virtiofsd) needs the guest's RAM shared with it
// (memory-backend-memfd,share=on), which rules out a private copy-on-write
// mapping of the template's memory file (Kata's templating, which Kata
// documents does not work with virtio-fs). Both use the same memfd backend
// so that the stream loads; only the pages the template's guest really
// used are copied.

// maxHotplug is the number of empty PCIe root ports of a template's
// machine: the NICs and shares a clone can have.
const maxHotplug = 4

// templateRecipe changes whenever what goes into a template changes in a
// way its key would not see (the save or restore steps).
const templateRecipe = "aurae-vm-template/1"

// templateVMID is the VM id every template's machine is rendered with, so
// that the key does not depend on which VM made it.
const templateVMID = "template"

// ErrTemplateUnsupported is returned when a VM cannot be started from a
// template (its machine has no PCI hot-plug, it has drives, …): the caller
// boots it cold.
var ErrTemplateUnsupported = errors.New("vm cannot start from a template")

// templateMode marks a boot as a template's (save) or a clone's
// (incoming: the template's state file, read-only).
type templateMode struct {
	incoming *os.File
}

// TemplateInfo describes a saved template.
type TemplateInfo struct {
	// Bytes is the size of the saved state.
	Bytes int64
	// Took is the whole creation: boot, save.
	Took time.Duration
}

// templateCheck says why cfg cannot use a template under accel a.
func templateCheck(cfg VMConfig, a Accel) error {
	if machineFor(a).virtio != "-pci" {
		return fmt.Errorf("%w: the %s machine has no PCI hot-plug", ErrTemplateUnsupported, machineFor(a).name)
	}
	if len(cfg.Drives) > 0 {
		return fmt.Errorf("%w: drives are not hot-plugged", ErrTemplateUnsupported)
	}
	if n := len(cfg.NICs) + len(cfg.Shares); n > maxHotplug {
		return fmt.Errorf("%w: %d NICs and shares, at most %d", ErrTemplateUnsupported, n, maxHotplug)
	}
	return nil
}

// templateConfig is the machine a template of cfg is made with: no NICs,
// shares or drives, the template's id.
func templateConfig(cfg VMConfig) VMConfig {
	t := cfg
	t.ID = templateVMID
	t.NICs, t.Shares, t.Drives = nil, nil, nil
	t.tmpl = &templateMode{}
	return t
}

// templateArgs are what a template's machine (and its clones') adds to
// QEMU's command line: the empty root ports, and for a clone the
// incoming state, paused (-S) until the hot-plugs are done.
func templateArgs(cfg VMConfig, l fdLayout) []string {
	var args []string
	for i := range maxHotplug {
		args = append(args, "-device", fmt.Sprintf("pcie-root-port,id=rp%d,chassis=%d,bus=pcie.0,addr=0x%x", i, i+1, 0x10+i))
	}
	if l.incoming != 0 {
		args = append(args, "-S", "-incoming", "fd:"+strconv.Itoa(l.incoming))
	}
	return args
}

// TemplateKey names the template cfg's VM can start from: a hash of
// everything that must match: QEMU's binary, the kernel, the root image or
// initramfs (and so the guest auraed inside), and the machine's whole
// command line (machine type, accelerator, vCPUs, memory, devices, kernel
// arguments). It fails with ErrTemplateUnsupported when cfg cannot use one.
func (q *QEMU) TemplateKey(ctx context.Context, cfg VMConfig) (string, error) {
	bin, err := q.binary()
	if err != nil {
		return "", err
	}
	a := cfg.Accel
	if a == AccelAuto {
		a, _ = q.probe(ctx, bin, cfg.Kernel)
	}
	if err := templateCheck(cfg, a); err != nil {
		return "", err
	}
	t := templateConfig(cfg)
	t.Dir = "/"
	h := sha256.New()
	_, _ = fmt.Fprintf(h, "%s\x00%s\x00", templateRecipe, bin)
	for _, f := range []string{bin, t.Kernel, t.RootImage, t.Initrd} {
		if f == "" {
			continue
		}
		sum, size, err := cachedHash(f)
		if err != nil {
			return "", fmt.Errorf("template key: %w", err)
		}
		if f == t.RootImage {
			t.rootImageSize = size
		}
		_, _ = fmt.Fprintf(h, "%s\x00", sum)
	}
	_, _ = fmt.Fprintf(h, "%s\x00", strings.Join(q.args(t, a), "\x00"))
	return hex.EncodeToString(h.Sum(nil))[:32], nil
}

// fileID is what tells that a file changed without reading it.
type fileID struct {
	dev, ino     uint64
	size, mtimeN int64
}

var hashCache = struct {
	sync.Mutex
	m map[string]struct {
		id  fileID
		sum string
	}
}{m: map[string]struct {
	id  fileID
	sum string
}{}}

// cachedHash is a file's sha256 (and size), read again only when the file
// changed.
func cachedHash(path string) (string, int64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return "", 0, fmt.Errorf("%s: %w", path, err)
	}
	id := fileID{dev: st.Dev, ino: st.Ino, size: st.Size, mtimeN: st.Mtim.Nano()}
	hashCache.Lock()
	e, ok := hashCache.m[path]
	hashCache.Unlock()
	if ok && e.id == id {
		return e.sum, st.Size, nil
	}
	sum, err := fileHash(path)
	if err != nil {
		return "", 0, err
	}
	hashCache.Lock()
	hashCache.m[path] = struct {
		id  fileID
		sum string
	}{id, sum}
	hashCache.Unlock()
	return sum, st.Size, nil
}

// MakeTemplate boots cfg's template machine in cfg.Dir (cfg.Booted must
// say when its guest is ready: nothing of a workload has run in it), then
// pauses it and saves it to out (opened by the caller, handed to QEMU by
// QMP getfd), and ends it. out is synced.
func (q *QEMU) MakeTemplate(ctx context.Context, cfg VMConfig, out *os.File) (TemplateInfo, error) {
	t0 := time.Now()
	if cfg.Booted == nil {
		return TemplateInfo{}, fmt.Errorf("make template: no readiness check: %w", errdefs.ErrInvalidArgument)
	}
	t := templateConfig(cfg)
	p, err := q.Start(ctx, t)
	if err != nil {
		return TemplateInfo{}, fmt.Errorf("make template: %w", err)
	}
	defer func() {
		kctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), exitWait)
		_ = q.Kill(kctx, p)
		cancel()
	}()
	if err := q.save(ctx, p, out); err != nil {
		return TemplateInfo{}, fmt.Errorf("make template: %w", err)
	}
	if err := out.Sync(); err != nil {
		return TemplateInfo{}, fmt.Errorf("make template: sync: %w", err)
	}
	fi, err := out.Stat()
	if err != nil {
		return TemplateInfo{}, err
	}
	if fi.Size() == 0 {
		return TemplateInfo{}, errors.New("make template: the saved state is empty")
	}
	return TemplateInfo{Bytes: fi.Size(), Took: time.Since(t0)}, nil
}

// save pauses the guest and migrates it to out.
func (q *QEMU) save(ctx context.Context, p *Proc, out *os.File) error {
	c, err := dialQMP(ctx, p.ControlSocket)
	if err != nil {
		return err
	}
	defer func() { _ = c.close() }()
	if _, err := c.execute("stop", nil); err != nil {
		return err
	}
	if _, err := c.executeFD("getfd", map[string]any{"fdname": "template"}, int(out.Fd())); err != nil {
		return err
	}
	if _, err := c.execute("migrate", map[string]any{"uri": "fd:template"}); err != nil {
		return err
	}
	return c.waitMigration(ctx, nil)
}

// waitMigration polls query-migrate until it completed (or failed, or
// QEMU exited: exited, when not nil, is closed then).
func (c *qmp) waitMigration(ctx context.Context, exited <-chan struct{}) error {
	for {
		ret, err := c.execute("query-migrate", nil)
		if err != nil {
			return err
		}
		var st struct {
			Status    string `json:"status"`
			ErrorDesc string `json:"error-desc"`
		}
		if err := json.Unmarshal(ret, &st); err != nil {
			return fmt.Errorf("qmp query-migrate: %w", err)
		}
		switch st.Status {
		case "completed":
			return nil
		case "failed", "cancelled":
			return fmt.Errorf("migration %s: %s", st.Status, st.ErrorDesc)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("migration still %q: %w", st.Status, ctx.Err())
		case <-exited:
			return errors.New("qemu exited during the migration")
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// StartFromTemplate starts cfg's VM from a template's saved state (which
// must be the template of TemplateKey(cfg)): QEMU loads it paused, its
// NICs and shares are hot-plugged, then it resumes. The guest must then be
// told its time, entropy, hostname and devices (api/guest/v0 Configure)
// before anything runs in it. On failure no QEMU is left.
func (q *QEMU) StartFromTemplate(ctx context.Context, cfg VMConfig, state *os.File) (*Proc, error) {
	if err := CheckDir(cfg.Dir); err != nil {
		return nil, err
	}
	bin, err := q.binary()
	if err != nil {
		return nil, err
	}
	a := cfg.Accel
	if a == AccelAuto {
		a, _ = q.probe(ctx, bin, cfg.Kernel)
	}
	if err := templateCheck(cfg, a); err != nil {
		return nil, err
	}
	fd, err := unix.FcntlInt(state.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("template state: %w", err)
	}
	incoming := os.NewFile(uintptr(fd), state.Name())
	defer incoming.Close() // QEMU has its own once started
	cfg.tmpl = &templateMode{incoming: incoming}
	if cfg.BootTimeout <= 0 {
		cfg.BootTimeout = defaultBootTimeout
	}
	p, err := q.boot(ctx, bin, cfg, a)
	if err != nil {
		return nil, fmt.Errorf("start vm %q from a template: %w", cfg.ID, err)
	}
	return p, nil
}

// restore waits for the incoming state to be loaded, hot-plugs cfg's NICs
// and shares onto the root ports, and resumes the guest.
func (q *QEMU) restore(ctx context.Context, p *Proc, cfg VMConfig, exited <-chan struct{}) error {
	var c *qmp
	for c == nil {
		var err error
		if c, err = dialQMP(ctx, p.ControlSocket); err != nil {
			select {
			case <-ctx.Done():
				return fmt.Errorf("restore: %w: %w", err, ctx.Err())
			case <-exited:
				return errors.New("restore: qemu exited")
			case <-time.After(10 * time.Millisecond):
			}
		}
	}
	defer func() { _ = c.close() }()
	if err := c.waitMigration(ctx, exited); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	if _, err := punchZeroPages(p.Pid, int64(cfg.MemMiB)<<20); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	l := layoutFor(cfg)
	taps := make([]string, len(l.taps))
	for i, fd := range l.taps {
		taps[i] = strconv.Itoa(fd)
	}
	if err := hotplug(c, cfg, taps); err != nil {
		return err
	}
	if _, err := c.execute("cont", nil); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	return nil
}

// hotplug adds cfg's NICs (on the tap descriptors taps names: QEMU's fd
// numbers or getfd names) and shares (their virtiofsds listen below the
// VM's dir) to the empty root ports of a template's machine.
func hotplug(c *qmp, cfg VMConfig, taps []string) error {
	port := 0
	for i, n := range cfg.NICs {
		id := "net" + strconv.Itoa(i)
		if _, err := c.execute("netdev_add", map[string]any{"type": "tap", "id": id, "fd": taps[i], "vhost": false}); err != nil {
			return fmt.Errorf("hot-plug nic %d: %w", i, err)
		}
		dev := map[string]any{"driver": "virtio-net-pci", "id": "nic" + strconv.Itoa(i), "netdev": id, "bus": "rp" + strconv.Itoa(port)}
		if n.MAC != "" {
			dev["mac"] = n.MAC
		}
		if _, err := c.execute("device_add", dev); err != nil {
			return fmt.Errorf("hot-plug nic %d: %w", i, err)
		}
		port++
	}
	for i, sh := range cfg.Shares {
		id := "fs" + strconv.Itoa(i)
		backend := map[string]any{"type": "socket", "data": map[string]any{
			"addr":   map[string]any{"type": "unix", "data": map[string]any{"path": inDir(fmt.Sprintf(virtiofsdSocket, i))}},
			"server": false,
		}}
		if _, err := c.execute("chardev-add", map[string]any{"id": id, "backend": backend}); err != nil {
			return fmt.Errorf("hot-plug share %d: %w", i, err)
		}
		dev := map[string]any{"driver": "vhost-user-fs-pci", "id": "fsdev" + strconv.Itoa(i), "chardev": id,
			"tag": sh.Tag, "queue-size": 1024, "bus": "rp" + strconv.Itoa(port)}
		if _, err := c.execute("device_add", dev); err != nil {
			return fmt.Errorf("hot-plug share %d: %w", i, err)
		}
		port++
	}
	return nil
}
