package hypervisor

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
)

// QEMU runs VMs with qemu-system-x86_64: `-M q35` under TCG (never hung in
// boots measured on the machines this runs on, where `-M microvm` hangs
// early about one boot in five), `-M microvm` under KVM.
type QEMU struct {
	opts Options

	mu  sync.Mutex
	bin string
}

var _ Hypervisor = (*QEMU)(nil)

// QEMUBinary is the QEMU looked up on PATH by default.
const QEMUBinary = "qemu-system-x86_64"

const (
	defaultBootTimeout = 60 * time.Second
	// exitWait bounds the wait for QEMU to exit after quit or SIGKILL.
	exitWait = 10 * time.Second
)

// NewQEMU returns the QEMU hypervisor. Its binary is looked up on first use,
// so that a host without QEMU still serves everything else.
func NewQEMU(o Options) *QEMU { return &QEMU{opts: o} }

// Name implements Hypervisor.
func (q *QEMU) Name() string { return "qemu" }

func (q *QEMU) binary() (string, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.bin != "" {
		return q.bin, nil
	}
	name := q.opts.Binary
	if name == "" {
		name = QEMUBinary
	}
	p, err := exec.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("%s (Debian package qemu-system-x86): %w: %w", name, ErrNotInstalled, errdefs.ErrFailedPrecondition)
	}
	if p, err = filepath.Abs(p); err != nil {
		return "", err
	}
	q.bin = p
	return p, nil
}

// machine is what differs between the two machine types.
type machine struct {
	name, cpu string
	// suffix of virtio devices: "-pci" on q35, "-device" (virtio-mmio) on
	// microvm.
	virtio string
}

func machineFor(a Accel) machine {
	if a == AccelKVM {
		return machine{name: "microvm", cpu: "host", virtio: "-device"}
	}
	return machine{name: "q35", cpu: "max", virtio: "-pci"}
}

// accelOpt is the -accel value: under TCG a 32 MiB translation cache
// instead of QEMU's default (RSS 180 MiB instead of 249 MiB after a boot,
// hack/vm-image/README.md).
func accelOpt(a Accel) string {
	if a == AccelTCG {
		return string(a) + ",tb-size=32"
	}
	return string(a)
}

// TCGKernelArg tells a guest that it runs under TCG: its auraed then runs
// the container runtime's processes (conmon, crun, the pod holder) without
// address space randomization, so that QEMU reuses their translated code
// from one exec to the next instead of translating it anew at each random
// address (conmon's start 4-5x, crun's 2-3x faster in the guest, measured).
// The containers get Linux's default personality back from the runtime
// (the VM controller's specs set linux.personality), so workloads keep
// ASLR.
const TCGKernelArg = "aurae.tcg=1"

// qemuOpt escapes a value inside a QEMU option list (',' doubles).
func qemuOpt(s string) string { return strings.ReplaceAll(s, ",", ",,") }

// rootImageArgs are the kernel arguments of a boot from the root image: the
// virtio-pmem device's ext4, read-only, mapped by DAX, its /init as init.
var rootImageArgs = []string{"root=/dev/pmem0", "rootfstype=ext4", "rootflags=dax=always", "ro", "init=/init"}

// rootImageAlign is what a root image's size must be a multiple of (a
// memory device's alignment).
const rootImageAlign = 2 << 20

// kernelCmdline adds what the boot needs to the VM's kernel arguments: the
// console on the first serial port, and a reboot on panic (QEMU runs with
// -no-reboot, so a guest that panics ends its VM instead of hanging).
func kernelCmdline(args []string) string {
	hasConsole, hasPanic := false, false
	for _, a := range args {
		hasConsole = hasConsole || strings.HasPrefix(a, "console=")
		hasPanic = hasPanic || strings.HasPrefix(a, "panic=")
	}
	out := append([]string{}, args...)
	if !hasConsole {
		out = append(out, "console=ttyS0")
	}
	if !hasPanic {
		out = append(out, "panic=-1")
	}
	return strings.Join(out, " ")
}

// args is QEMU's command line for cfg under accel a, with the files of
// layoutFor(cfg) inherited (see qemu_files.go).
func (q *QEMU) args(cfg VMConfig, a Accel) []string {
	m := machineFor(a)
	l := layoutFor(cfg)
	mem := strconv.FormatUint(uint64(cfg.MemMiB), 10) + "M"
	memOpt := mem
	if l.rootImage != 0 {
		// The root image is a memory device: it needs a slot above RAM.
		memOpt += ",slots=1,maxmem=" + strconv.FormatUint(uint64(cfg.MemMiB)+uint64(cfg.rootImageSize>>20), 10) + "M"
	}
	machineOpt := m.name
	shared := len(cfg.Shares) > 0 || cfg.tmpl != nil
	if shared {
		machineOpt += ",memory-backend=mem"
	}
	args := []string{
		"-name", "aurae-vm-" + cfg.ID + ",process=aurae-vm-" + cfg.ID,
		"-M", machineOpt,
		"-accel", accelOpt(a),
		"-cpu", m.cpu,
		"-m", memOpt,
		"-smp", strconv.FormatUint(uint64(cfg.VCPUs), 10),
		"-nodefaults", "-no-user-config",
		// seccomp: no obsolete syscalls, no setuid/setgid, no fork/exec,
		// no scheduler or affinity changes (QEMU is never daemonized here:
		// -daemonize would need fork).
		"-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
		// -nographic would put a monitor on stdio; the VM has no display
		// and its console goes to a file.
		"-display", "none",
		"-no-reboot",
		"-chardev", "file,id=console,path=" + inDir(ConsoleLogName),
		"-serial", "chardev:console",
		"-kernel", fdPath(l.kernel),
	}
	if shared {
		// A template's machine has it too, for the shares of its clones.
		args = append(args, "-object", "memory-backend-memfd,id=mem,size="+mem+",share=on")
	}
	kargs := cfg.KernelArgs
	switch {
	case l.rootImage != 0:
		// Private and read-only: QEMU maps the file, the guest cannot
		// change it, and every VM shares its page cache.
		args = append(args,
			"-object", "memory-backend-file,id=rootimg,mem-path="+fdPath(l.rootImage)+",size="+strconv.FormatInt(cfg.rootImageSize, 10)+",share=off,readonly=on",
			"-device", "virtio-pmem"+m.virtio+",memdev=rootimg,id=rootpmem",
		)
		kargs = append(append([]string{}, rootImageArgs...), kargs...)
	case l.initrd != 0:
		args = append(args, "-initrd", fdPath(l.initrd))
	}
	if a == AccelTCG {
		// A copy: kargs may be cfg.KernelArgs itself.
		kargs = append(append([]string{}, kargs...), TCGKernelArg)
	}
	args = append(args, "-append", kernelCmdline(kargs))
	args = append(args,
		// Free page reporting: the guest hands the pages it frees (the
		// initramfs image once unpacked, exited processes) back, and QEMU
		// discards them from the host; the balloon is never inflated.
		"-device", "virtio-balloon"+m.virtio+",free-page-reporting=on",
		"-device", "virtio-serial"+m.virtio,
		"-chardev", "socket,id=aurae,path="+inDir(AuraeSocketName)+",server=on,wait=off",
		"-device", "virtserialport,chardev=aurae,name="+AuraePortName,
	)
	for i, d := range cfg.Drives {
		ro := "off"
		if d.ReadOnly {
			ro = "on"
		}
		set := strconv.Itoa(i + 1)
		args = append(args,
			"-add-fd", "fd="+strconv.Itoa(l.drives[i])+",set="+set,
			"-drive", "if=none,id=drive-"+d.ID+",file=/dev/fdset/"+set+",format=raw,readonly="+ro,
			"-device", "virtio-blk"+m.virtio+",drive=drive-"+d.ID+",serial="+d.ID,
		)
	}
	if cfg.tmpl != nil {
		// NICs and shares are hot-plugged into a clone (template.go).
		return append(append(args, templateArgs(cfg, l)...), "-qmp", "unix:"+inDir(ControlSocketName)+",server=on,wait=off")
	}
	for i, n := range cfg.NICs {
		id := "net" + strconv.Itoa(i)
		dev := "virtio-net" + m.virtio + ",netdev=" + id
		if n.MAC != "" {
			dev += ",mac=" + n.MAC
		}
		args = append(args,
			"-netdev", "tap,id="+id+",fd="+strconv.Itoa(l.taps[i])+",vhost=off",
			"-device", dev,
		)
	}
	for i := range cfg.Shares {
		// virtio-fs: each share's virtiofsd (started first, see
		// virtiofsd.go) serves the guest on a vhost-user socket, which
		// needs the guest's memory shared with it.
		id := "fs" + strconv.Itoa(i)
		args = append(args,
			"-chardev", "socket,id="+id+",path="+inDir(fmt.Sprintf(virtiofsdSocket, i)),
			"-device", "vhost-user-fs"+m.virtio+",queue-size=1024,chardev="+id+",tag="+qemuOpt(cfg.Shares[i].Tag),
		)
	}
	// No -pidfile: QEMU resolves its path, which needs search permission
	// on the dir's parents; boot writes it.
	return append(args, "-qmp", "unix:"+inDir(ControlSocketName)+",server=on,wait=off")
}

// errBootTimeout marks a boot that did not get through in time (retried).
var errBootTimeout = errors.New("guest did not boot in time")

// Start implements Hypervisor: it boots the VM, waits for the guest's first
// console output (or cfg.Booted) and for QMP to report it running. A boot
// that times out is killed and retried once.
func (q *QEMU) Start(ctx context.Context, cfg VMConfig) (*Proc, error) {
	if err := CheckDir(cfg.Dir); err != nil {
		return nil, err
	}
	bin, err := q.binary()
	if err != nil {
		return nil, err
	}
	accel, warning := cfg.Accel, ""
	if accel == AccelAuto {
		accel, warning = q.probe(ctx, bin, cfg.Kernel)
	}
	if cfg.BootTimeout <= 0 {
		cfg.BootTimeout = defaultBootTimeout
	}
	var errs []error
	for attempt := 1; attempt <= 2; attempt++ {
		p, err := q.boot(ctx, bin, cfg, accel)
		if err == nil {
			p.Warning = warning
			return p, nil
		}
		errs = append(errs, fmt.Errorf("boot %d: %w", attempt, err))
		if !errors.Is(err, errBootTimeout) || ctx.Err() != nil {
			break
		}
	}
	return nil, fmt.Errorf("start vm %q under %s: %w", cfg.ID, accel, errors.Join(errs...))
}

// boot runs one QEMU and waits for the guest to boot; on failure no QEMU
// is left.
func (q *QEMU) boot(ctx context.Context, bin string, cfg VMConfig, a Accel) (_ *Proc, retErr error) {
	dir := cfg.Dir
	if machineFor(a).virtio != "-pci" {
		// virtio-pmem is a PCI device: microvm boots the initramfs.
		cfg.RootImage = ""
	}
	for _, n := range []string{ControlSocketName, AuraeSocketName, PidFileName, ConsoleLogName} {
		if err := os.Remove(filepath.Join(dir, n)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
	}
	logf, err := os.OpenFile(filepath.Join(dir, LogFileName), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	// The shares' virtiofsds first: QEMU connects to them at start.
	helpers, err := startShares(ctx, dir, cfg)
	defer func() {
		if retErr != nil {
			stopShares(ctx, dir, helpers)
		}
	}()
	if err != nil {
		return nil, err
	}
	files, err := openFiles(cfg)
	if err != nil {
		return nil, err
	}
	defer closeAll(files)
	if l := layoutFor(cfg); l.rootImage != 0 {
		fi, err := files[l.rootImage-dirFD].Stat()
		if err != nil {
			return nil, fmt.Errorf("root image: %w", err)
		}
		if fi.Size() <= 0 || fi.Size()%rootImageAlign != 0 {
			return nil, fmt.Errorf("root image %s: size %d is not a multiple of 2 MiB: %w", cfg.RootImage, fi.Size(), errdefs.ErrFailedPrecondition)
		}
		cfg.rootImageSize = fi.Size()
	}
	// A detached child in its own session, not tied to ctx: the VM outlives
	// this call and this process. Its stderr goes to hypervisor.log.
	cmd := exec.Command(bin, q.args(cfg, a)...)
	cmd.Stdin = nil
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.Dir = "/"
	cmd.ExtraFiles = files
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if cfg.UID != 0 {
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: cfg.UID, Gid: cfg.GID, Groups: kvmGroups(a)}
	}
	if err := startIn(cfg.NetNSPath, cmd); err != nil {
		return nil, fmt.Errorf("run %s: %w", bin, err)
	}
	exited := make(chan struct{})
	// Reap the child when it exits while this process lives.
	go func() { _ = cmd.Wait(); close(exited) }()
	pid := cmd.Process.Pid
	st, err := startTime(pid)
	if err != nil {
		<-exited
		return nil, fmt.Errorf("qemu exited at once: %s", tail(filepath.Join(dir, LogFileName)))
	}
	p := &Proc{Pid: pid, StartTime: st, ControlSocket: filepath.Join(dir, ControlSocketName), Accel: a}
	if err := os.WriteFile(filepath.Join(dir, PidFileName), []byte(strconv.Itoa(pid)+"\n"), 0o644); err != nil {
		retErr = err // the deferred kill below is not set up yet
		kctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), exitWait)
		_ = killProc(kctx, pid, st, exitWait)
		cancel()
		<-exited
		return nil, err
	}
	defer func() {
		if retErr != nil {
			kctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), exitWait)
			_ = killProc(kctx, p.Pid, p.StartTime, exitWait)
			cancel()
			<-exited
		}
	}()
	if cfg.Place != nil {
		if err := cfg.Place(append([]int{pid}, helpers...)...); err != nil {
			return nil, fmt.Errorf("place qemu: %w", err)
		}
	}
	if cfg.tmpl != nil && cfg.tmpl.incoming != nil {
		rctx, cancel := context.WithTimeout(ctx, cfg.BootTimeout)
		defer cancel()
		if err := q.restore(rctx, p, cfg, exited); err != nil {
			return nil, fmt.Errorf("%w: %s", err, tail(filepath.Join(dir, LogFileName)))
		}
		return p, nil
	}

	bctx, cancel := context.WithTimeout(ctx, cfg.BootTimeout)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	booted := false
	for {
		select {
		case <-exited:
			return nil, fmt.Errorf("qemu exited during boot: %s; console: %s", tail(filepath.Join(dir, LogFileName)), tail(filepath.Join(dir, ConsoleLogName)))
		case <-bctx.Done():
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, fmt.Errorf("%w (%s): console: %q", errBootTimeout, cfg.BootTimeout, tail(filepath.Join(dir, ConsoleLogName)))
		case <-tick.C:
		}
		if !booted {
			if cfg.Booted != nil {
				booted = cfg.Booted(bctx) == nil
			} else if fi, err := os.Stat(filepath.Join(dir, ConsoleLogName)); err == nil && fi.Size() > 0 {
				booted = true
			}
		}
		if booted {
			qctx, qcancel := context.WithTimeout(bctx, 2*time.Second)
			s, err := qmpStatus(qctx, p.ControlSocket)
			qcancel()
			if err == nil && s == "running" {
				return p, nil
			}
		}
	}
}

// tail is the last lines of a log file, for error messages.
func tail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	b = bytes.TrimSpace(b)
	if len(b) > 600 {
		b = b[len(b)-600:]
	}
	return string(b)
}

// Stop implements Hypervisor: system_powerdown (the guest sees an ACPI
// power button), up to grace for QEMU to exit, then quit, then SIGKILL.
func (q *QEMU) Stop(ctx context.Context, p *Proc, grace time.Duration) error {
	if !p.Alive() {
		return nil
	}
	qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	_, err := qmpDo(qctx, p.ControlSocket, "system_powerdown", nil)
	cancel()
	if err == nil && grace > 0 {
		wctx, cancel := context.WithTimeout(ctx, grace)
		err := p.Wait(wctx)
		cancel()
		if err == nil {
			return killVirtiofsds(ctx, filepath.Dir(p.ControlSocket))
		}
	}
	if ctx.Err() != nil {
		return q.Kill(context.WithoutCancel(ctx), p)
	}
	qctx, cancel = context.WithTimeout(ctx, 2*time.Second)
	_, err = qmpDo(qctx, p.ControlSocket, "quit", nil)
	cancel()
	if err == nil {
		wctx, cancel := context.WithTimeout(ctx, exitWait)
		err := p.Wait(wctx)
		cancel()
		if err == nil {
			return killVirtiofsds(ctx, filepath.Dir(p.ControlSocket))
		}
	}
	return q.Kill(context.WithoutCancel(ctx), p)
}

// Kill implements Hypervisor: QEMU, then the shares' virtiofsds.
func (q *QEMU) Kill(ctx context.Context, p *Proc) error {
	err := killProc(ctx, p.Pid, p.StartTime, exitWait)
	return errors.Join(err, killVirtiofsds(ctx, filepath.Dir(p.ControlSocket)))
}

// Status implements Hypervisor with QMP query-status.
func (q *QEMU) Status(ctx context.Context, p *Proc) (string, error) {
	if !p.Alive() {
		return "", fmt.Errorf("qemu pid %d: %w", p.Pid, errdefs.ErrNotFound)
	}
	return qmpStatus(ctx, p.ControlSocket)
}

// Adopt implements Hypervisor: pid must run QEMU with its QMP socket at
// controlSocket (which guards against a reused pid), and QMP must answer.
func (q *QEMU) Adopt(ctx context.Context, pid int, controlSocket string) (*Proc, error) {
	st, err := startTime(pid)
	if err != nil {
		return nil, fmt.Errorf("qemu pid %d: %w", pid, errdefs.ErrNotFound)
	}
	argv, err := cmdline(pid)
	if err != nil {
		return nil, fmt.Errorf("qemu pid %d: %w", pid, errdefs.ErrNotFound)
	}
	// Its QMP socket is in its inherited dir (or, started before QEMU
	// ran unprivileged, at the socket's path).
	want := "unix:" + qemuOpt(controlSocket) + ","
	inherited := false
	if dir, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%d", pid, dirFD)); err == nil && dir == filepath.Dir(controlSocket) {
		inherited = true
	}
	found := false
	accel := AccelTCG
	for i, a := range argv {
		if i > 0 && argv[i-1] == "-qmp" && (strings.HasPrefix(a, want) || (inherited && strings.HasPrefix(a, "unix:"+inDir(ControlSocketName)+","))) {
			found = true
		}
		if i > 0 && argv[i-1] == "-accel" {
			accel = Accel(strings.SplitN(a, ",", 2)[0])
		}
	}
	if !found {
		return nil, fmt.Errorf("pid %d is not the qemu of %s: %w", pid, controlSocket, errdefs.ErrNotFound)
	}
	p := &Proc{Pid: pid, StartTime: st, ControlSocket: controlSocket, Accel: accel}
	if _, err := qmpStatus(ctx, controlSocket); err != nil {
		return p, fmt.Errorf("qemu pid %d does not answer on %s: %w: %w", pid, controlSocket, err, errdefs.ErrUnavailable)
	}
	return p, nil
}
