package hypervisor

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// templateFiles writes a kernel and a root image to key templates with.
func templateFiles(t *testing.T) (kernel, root string) {
	t.Helper()
	if _, err := exec.LookPath(QEMUBinary); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s not installed (make deps)", QEMUBinary)
		}
		t.Skipf("%s not installed (apt-get install qemu-system-x86)", QEMUBinary)
	}
	dir := t.TempDir()
	kernel, root = filepath.Join(dir, "vmlinux"), filepath.Join(dir, "rootfs.img")
	if err := os.WriteFile(kernel, []byte("kernel v1"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(root, make([]byte, rootImageAlign), 0o644); err != nil {
		t.Fatal(err)
	}
	return kernel, root
}

func TestTemplateKey(t *testing.T) {
	kernel, root := templateFiles(t)
	q := NewQEMU(Options{})
	ctx := context.Background()
	base := VMConfig{ID: "a", Dir: "/run/a", Kernel: kernel, RootImage: root, MemMiB: 256, VCPUs: 1, Accel: AccelTCG, KernelArgs: []string{"quiet"}}
	key := func(cfg VMConfig) string {
		t.Helper()
		k, err := q.TemplateKey(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	k0 := key(base)
	// What a clone gets on its own does not change the key.
	same := base
	same.ID, same.Dir = "b", "/run/b"
	same.NICs = []NIC{{Tap: "tap0"}}
	same.Shares = []Share{{Tag: "aurae", Path: "/x"}}
	same.UID = 1234
	if k := key(same); k != k0 {
		t.Errorf("key changed with the VM's id, dir, NICs, shares or user: %s != %s", k, k0)
	}
	// What the template's guest is made of does.
	for name, change := range map[string]func(*VMConfig){
		"memory":      func(c *VMConfig) { c.MemMiB = 512 },
		"vcpus":       func(c *VMConfig) { c.VCPUs = 2 },
		"kernel args": func(c *VMConfig) { c.KernelArgs = nil },
	} {
		c := base
		change(&c)
		if key(c) == k0 {
			t.Errorf("key unchanged by the %s", name)
		}
	}
	if err := os.WriteFile(kernel, []byte("kernel v2"), 0o644); err != nil {
		t.Fatal(err)
	}
	if key(base) == k0 {
		t.Error("key unchanged by a new kernel")
	}
	if err := os.WriteFile(root, append(make([]byte, rootImageAlign-1), 1), 0o644); err != nil {
		t.Fatal(err)
	}
	k2 := key(base)
	if k2 == k0 {
		t.Error("key unchanged by a new root image (the guest auraed inside)")
	}

	for name, c := range map[string]VMConfig{
		"microvm (KVM)": func() VMConfig { c := base; c.Accel = AccelKVM; return c }(),
		"drives":        func() VMConfig { c := base; c.Drives = []Drive{{ID: "d", Path: "/d"}}; return c }(),
		"too many devices": func() VMConfig {
			c := base
			c.NICs = make([]NIC, maxHotplug)
			c.Shares = []Share{{Tag: "t", Path: "/p"}}
			return c
		}(),
	} {
		if _, err := q.TemplateKey(ctx, c); !errors.Is(err, ErrTemplateUnsupported) {
			t.Errorf("%s: %v, want ErrTemplateUnsupported", name, err)
		}
	}
}

func TestTemplateMachineHasEmptyPortsAndNoHotPluggedDevices(t *testing.T) {
	cfg := VMConfig{ID: "a", Dir: "/run/a", Kernel: "/k", MemMiB: 256, VCPUs: 1,
		NICs: []NIC{{Tap: "tap0"}}, Shares: []Share{{Tag: "aurae", Path: "/x"}}}
	q := NewQEMU(Options{})
	plain := strings.Join(q.args(cfg, AccelTCG), " ")
	if !strings.Contains(plain, "vhost-user-fs") || !strings.Contains(plain, "-netdev") || strings.Contains(plain, "pcie-root-port") {
		t.Fatalf("a cold boot's machine: %s", plain)
	}
	tc := templateConfig(cfg)
	args := q.args(tc, AccelTCG)
	joined := strings.Join(args, " ")
	if strings.Count(joined, "pcie-root-port") != maxHotplug || !strings.Contains(joined, "memory-backend-memfd,id=mem") ||
		strings.Contains(joined, "vhost-user-fs") || strings.Contains(joined, "-netdev") || strings.Contains(joined, "-incoming") {
		t.Errorf("a template's machine: %s", joined)
	}
	// A clone: the same machine, paused, reading the state from its fd.
	state, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer state.Close()
	cl := cfg
	cl.tmpl = &templateMode{incoming: state}
	l := layoutFor(cl)
	cargs := q.args(cl, AccelTCG)
	i := slices.Index(cargs, "-incoming")
	if i < 0 || cargs[i+1] != "fd:"+strconv.Itoa(l.incoming) || !slices.Contains(cargs, "-S") || l.incoming != l.taps[0]+1 {
		t.Errorf("a clone's machine: %v (layout %+v)", cargs, l)
	}
	if strings.Contains(strings.Join(cargs, " "), "vhost-user-fs") {
		t.Error("a clone's share is on its command line (QEMU 7.2 refuses to load a state with it)")
	}
}
