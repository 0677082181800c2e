package hypervisor

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
)

func argAfter(args []string, flag string) []string {
	var out []string
	for i := 0; i+1 < len(args); i++ {
		if args[i] == flag {
			out = append(out, args[i+1])
		}
	}
	return out
}

func TestArgsTCG(t *testing.T) {
	q := NewQEMU(Options{})
	args := q.args(VMConfig{
		ID: "vm1", Dir: "/run/x,y", Kernel: "/k/vmlinux", Initrd: "/k/initrd",
		KernelArgs: []string{"quiet"}, MemMiB: 128, VCPUs: 2,
		Drives: []Drive{{ID: "root", Path: "/img/root.raw", ReadOnly: true}, {ID: "mount0", Path: "/img/d,1.raw"}},
	}, AccelTCG)
	line := strings.Join(args, " ")
	for _, want := range []string{
		"-M q35", "-accel tcg,tb-size=32", "-cpu max", "-m 128M", "-smp 2", "-nodefaults", "-no-user-config", "-display none", "-no-reboot",
		// Everything through inherited files (qemu_files.go): 3 the dir,
		// 4 the kernel, 5 the initrd, then the drives.
		"-kernel /proc/self/fd/4", "-initrd /proc/self/fd/5",
		"-device virtio-balloon-pci,free-page-reporting=on",
		"-device virtio-serial-pci",
		"-chardev socket,id=aurae,path=/proc/self/fd/3/aurae.sock,server=on,wait=off",
		"-device virtserialport,chardev=aurae,name=aurae.0",
		"-add-fd fd=6,set=1 -drive if=none,id=drive-root,file=/dev/fdset/1,format=raw,readonly=on",
		"-device virtio-blk-pci,drive=drive-root,serial=root",
		"-add-fd fd=7,set=2 -drive if=none,id=drive-mount0,file=/dev/fdset/2,format=raw,readonly=off",
		"-qmp unix:/proc/self/fd/3/qmp.sock,server=on,wait=off",
		"-chardev file,id=console,path=/proc/self/fd/3/console.log -serial chardev:console",
	} {
		if !strings.Contains(line, want) {
			t.Errorf("command line lacks %q:\n%s", want, line)
		}
	}
	if got := argAfter(args, "-append"); len(got) != 1 || got[0] != "quiet aurae.tcg=1 console=ttyS0 panic=-1" {
		t.Errorf("-append = %q", got)
	}
	if slices.Contains(args, "-nographic") || slices.Contains(args, "-daemonize") {
		t.Errorf("unexpected -nographic/-daemonize: %s", line)
	}
}

// TestArgsRootImage: a root image replaces the initramfs, as a read-only,
// private virtio-pmem device above the guest's RAM, booted with DAX.
func TestArgsRootImage(t *testing.T) {
	cfg := VMConfig{ID: "v", Dir: "/d", Kernel: "/k", Initrd: "/i", RootImage: "/r.img", rootImageSize: 64 << 20,
		KernelArgs: []string{"quiet"}, MemMiB: 256, VCPUs: 1, Shares: []Share{{Tag: "s", Path: "/s"}}}
	args := NewQEMU(Options{}).args(cfg, AccelTCG)
	line := strings.Join(args, " ")
	for _, want := range []string{
		"-m 256M,slots=1,maxmem=320M",
		"-object memory-backend-file,id=rootimg,mem-path=/proc/self/fd/5,size=67108864,share=off,readonly=on",
		"-device virtio-pmem-pci,memdev=rootimg,id=rootpmem",
		"-object memory-backend-memfd,id=mem,size=256M,share=on",
	} {
		if !strings.Contains(line, want) {
			t.Errorf("command line lacks %q:\n%s", want, line)
		}
	}
	if strings.Contains(line, "-initrd") {
		t.Errorf("-initrd beside a root image: %s", line)
	}
	if got := argAfter(args, "-append"); len(got) != 1 || got[0] != "root=/dev/pmem0 rootfstype=ext4 rootflags=dax=always ro init=/init quiet aurae.tcg=1 console=ttyS0 panic=-1" {
		t.Errorf("-append = %q", got)
	}
	if l := layoutFor(cfg); l.rootImage != 5 || l.initrd != 0 {
		t.Errorf("layout %+v: want the root image at fd 5 and no initrd", l)
	}
}

func TestArgsKVM(t *testing.T) {
	args := NewQEMU(Options{}).args(VMConfig{ID: "v", Dir: "/d", Kernel: "/k", MemMiB: 64, VCPUs: 1,
		KernelArgs: []string{"console=hvc0", "panic=5"}, Drives: []Drive{{ID: "root", Path: "/r"}}}, AccelKVM)
	line := strings.Join(args, " ")
	for _, want := range []string{"-M microvm", "-accel kvm", "-cpu host", "-device virtio-balloon-device,free-page-reporting=on", "-device virtio-serial-device", "-device virtio-blk-device,drive=drive-root"} {
		if !strings.Contains(line, want) {
			t.Errorf("command line lacks %q:\n%s", want, line)
		}
	}
	if strings.Contains(line, "-initrd") {
		t.Errorf("-initrd without an initrd: %s", line)
	}
	if got := argAfter(args, "-append"); got[0] != "console=hvc0 panic=5" {
		t.Errorf("-append = %q, want the user's console and panic kept, and no %s under KVM", got, TCGKernelArg)
	}
}

func TestNew(t *testing.T) {
	h, err := New("", Options{})
	if err != nil || h.Name() != "qemu" {
		t.Fatalf("New(\"\") = %v, %v", h, err)
	}
	t.Setenv("PATH", t.TempDir())
	for _, name := range []string{"cloud-hypervisor", "firecracker"} {
		if _, err := New(name, Options{}); !errors.Is(err, ErrNotInstalled) || !errdefs.IsFailedPrecondition(err) {
			t.Errorf("New(%q) without the binary = %v, want ErrNotInstalled", name, err)
		}
	}
	if _, err := New("xen", Options{}); !errdefs.IsInvalidArgument(err) {
		t.Errorf("New(xen) = %v, want InvalidArgument", err)
	}
	if _, err := NewQEMU(Options{}).Start(context.Background(), VMConfig{ID: "x", Dir: t.TempDir()}); !errors.Is(err, ErrNotInstalled) {
		t.Errorf("Start without qemu = %v, want ErrNotInstalled", err)
	}
}

func TestCheckDir(t *testing.T) {
	if err := CheckDir("/" + strings.Repeat("d", 100)); !errdefs.IsInvalidArgument(err) {
		t.Errorf("long dir: %v", err)
	}
	if err := CheckDir("rel"); !errdefs.IsInvalidArgument(err) {
		t.Errorf("relative dir: %v", err)
	}
	if err := CheckDir("/var/lib/aurae/vms/x"); err != nil {
		t.Error(err)
	}
}

// fakeQMP serves QMP on a unix socket with canned answers.
func fakeQMP(t *testing.T, answer func(cmd string) string) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "qmp.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = c.Write([]byte(`{"QMP": {"version": {"qemu": {"major": 7}}, "capabilities": []}}` + "\r\n"))
				r := bufio.NewReader(c)
				dec := json.NewDecoder(r)
				for {
					var req struct {
						Execute string `json:"execute"`
						ID      int    `json:"id"`
					}
					if dec.Decode(&req) != nil {
						return
					}
					// An event first, as QEMU may send any time.
					_, _ = c.Write([]byte(`{"event": "RTC_CHANGE", "data": {}, "timestamp": {"seconds": 1, "microseconds": 2}}` + "\r\n"))
					_, _ = c.Write([]byte(answer(req.Execute) + "\r\n"))
				}
			}()
		}
	}()
	return sock
}

func TestQMP(t *testing.T) {
	sock := fakeQMP(t, func(cmd string) string {
		switch cmd {
		case "qmp_capabilities":
			return `{"return": {}}`
		case "query-status":
			return `{"return": {"status": "running", "singlestep": false, "running": true}}`
		default:
			return `{"error": {"class": "CommandNotFound", "desc": "The command ` + cmd + ` has not been found"}}`
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := qmpStatus(ctx, sock)
	if err != nil || s != "running" {
		t.Fatalf("query-status = %q, %v", s, err)
	}
	_, err = qmpDo(ctx, sock, "bogus", nil)
	var qe *QMPError
	if !errors.As(err, &qe) || qe.Class != "CommandNotFound" {
		t.Fatalf("bogus = %v, want a CommandNotFound QMPError", err)
	}
}

func TestQMPNotQMP(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "s")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err == nil {
			_, _ = c.Write([]byte(`{"hello": 1}` + "\n"))
			time.Sleep(time.Second)
			c.Close()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if _, err := qmpStatus(ctx, sock); err == nil || !strings.Contains(err.Error(), "not a QMP socket") {
		t.Fatalf("got %v", err)
	}
	// A silent server: ctx bounds the greeting.
	l2, _ := net.Listen("unix", sock+"2")
	defer l2.Close()
	ctx2, cancel2 := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel2()
	t0 := time.Now()
	if _, err := qmpStatus(ctx2, sock+"2"); err == nil || time.Since(t0) > 2*time.Second {
		t.Fatalf("silent server: %v after %s", err, time.Since(t0))
	}
}

func TestProbeWithoutKVM(t *testing.T) {
	old := kvmDevice
	kvmDevice = filepath.Join(t.TempDir(), "kvm")
	defer func() { kvmDevice = old }()
	a, w := NewQEMU(Options{}).probe(context.Background(), "/bin/false", "/nonexistent")
	if a != AccelTCG || !strings.Contains(w, "KVM unavailable") {
		t.Fatalf("probe = %q, %q", a, w)
	}
}

// testKernel is a guest kernel for root tests, or skips.
func testKernel(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (/dev/kvm)")
	}
	if _, err := exec.LookPath(QEMUBinary); err != nil {
		t.Skipf("%s not installed (apt-get install qemu-system-x86)", QEMUBinary)
	}
	for _, k := range []string{os.Getenv("AURAE_TEST_KERNEL"), "/var/lib/aurae/vm/vmlinux"} {
		if k != "" {
			if _, err := os.Stat(k); err == nil {
				return k
			}
		}
	}
	t.Skip("no guest kernel: make vm-image, or AURAE_TEST_KERNEL=<vmlinux or bzImage>")
	return ""
}

// TestProbeCached probes KVM with a real boot (TCG on hosts whose /dev/kvm
// cannot boot the kernel), then finds the verdict in the cache dir.
func TestProbeCached(t *testing.T) {
	kernel := testKernel(t)
	if _, err := os.Stat("/dev/kvm"); err != nil {
		t.Skip("no /dev/kvm: the probe is not run")
	}
	cache := t.TempDir()
	q := NewQEMU(Options{CacheDir: cache, ProbeTimeout: 20 * time.Second})
	bin, err := q.binary()
	if err != nil {
		t.Fatal(err)
	}
	probeMu.Lock()
	clear(probeCache)
	probeMu.Unlock()
	t0 := time.Now()
	a, w := q.probe(context.Background(), bin, kernel)
	t.Logf("probe: %s in %s; warning: %s", a, time.Since(t0).Round(time.Millisecond), w)
	if a == AccelTCG && w == "" {
		t.Error("TCG without a warning")
	}
	files, _ := filepath.Glob(filepath.Join(cache, "accel-*.json"))
	if len(files) != 1 {
		t.Fatalf("cache files: %v", files)
	}
	probeMu.Lock()
	clear(probeCache)
	probeMu.Unlock()
	t0 = time.Now()
	a2, w2 := NewQEMU(Options{CacheDir: cache}).probe(context.Background(), bin, kernel)
	if a2 != a || w2 != w || time.Since(t0) > 2*time.Second {
		t.Fatalf("cached probe = %s %q after %s, want %s %q at once", a2, w2, time.Since(t0), a, w)
	}
	if left, _ := filepath.Glob(filepath.Join(cache, ".kvm-probe-*")); len(left) != 0 {
		t.Errorf("probe dirs left: %v", left)
	}
}

// TestBootTimeoutRetried: a guest that never shows it booted is killed
// after the boot timeout, booted once more, then given up: no QEMU left.
func TestBootTimeoutRetried(t *testing.T) {
	kernel := testKernel(t)
	dir := t.TempDir()
	boots, pidsSeen := 0, ""
	q := NewQEMU(Options{})
	t0 := time.Now()
	_, err := q.Start(context.Background(), VMConfig{
		ID: "never", Dir: dir, Kernel: kernel, MemMiB: 128, VCPUs: 1, Accel: AccelTCG,
		// Without a root the kernel panics; panic=0 keeps it there rather
		// than ending QEMU, as a hung guest would.
		KernelArgs:  []string{"panic=0"},
		BootTimeout: 2 * time.Second,
		Booted: func(ctx context.Context) error {
			if b, _ := os.ReadFile(filepath.Join(dir, PidFileName)); len(b) > 0 {
				if pid := strings.TrimSpace(string(b)); pid != "" {
					if _, err := os.Stat("/proc/" + pid); err == nil && !strings.Contains(pidsSeen, pid+" ") {
						pidsSeen += pid + " "
						boots++
					}
				}
			}
			return errors.New("not yet")
		},
	})
	if !errors.Is(err, errBootTimeout) || !strings.Contains(err.Error(), "boot 2") {
		t.Fatalf("Start = %v, want two boot timeouts", err)
	}
	t.Logf("gave up after %s: %v", time.Since(t0).Round(time.Millisecond), err)
	if boots != 2 {
		t.Errorf("saw %d QEMUs, want 2", boots)
	}
	for _, pid := range strings.Fields(pidsSeen) {
		if _, err := os.Stat("/proc/" + pid); err == nil {
			if b, _ := os.ReadFile("/proc/" + pid + "/stat"); !strings.Contains(string(b), ") Z") {
				t.Errorf("qemu %s still runs", pid)
			}
		}
	}
}
