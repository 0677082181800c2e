package vm

import (
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/containerd/errdefs"

	"github.com/aurae-runtime/aurae-cri/pkg/controller"
)

func TestParseNetInfo(t *testing.T) {
	link := "2: eth0@if9: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1450 qdisc noqueue state UP mode DEFAULT group default \\    link/ether 4a:1b:2c:3d:4e:5f brd ff:ff:ff:ff:ff:ff link-netnsid 0\n"
	addr := "2: eth0    inet 10.88.0.5/16 brd 10.88.255.255 scope global eth0\\       valid_lft forever preferred_lft forever\n"
	route := "default via 10.88.0.1 dev eth0 \n"
	ni, err := parseNetInfo(link, addr, route)
	if err != nil {
		t.Fatal(err)
	}
	want := netInfo{MAC: "4a:1b:2c:3d:4e:5f", CIDR: "10.88.0.5/16", Gateway: "10.88.0.1", MTU: "1450"}
	if ni != want {
		t.Fatalf("got %+v, want %+v", ni, want)
	}
	if s := guestNetScript(ni); s != "ip link set dev eth0 address 4a:1b:2c:3d:4e:5f && ip link set dev eth0 mtu 1450 && ip addr add 10.88.0.5/16 dev eth0 && ip link set dev eth0 up && ip route add default via 10.88.0.1 dev eth0" {
		t.Fatalf("script %q", s)
	}
	if ni, err := parseNetInfo(link, addr, ""); err != nil || ni.Gateway != "" {
		t.Fatalf("no default route: %+v %v", ni, err)
	}
	if _, err := parseNetInfo(link, "", route); err == nil {
		t.Fatal("no address: want an error")
	}
	if _, err := parseNetInfo("", addr, route); err == nil {
		t.Fatal("no MAC: want an error")
	}
}

func TestMirrorCommands(t *testing.T) {
	var got []string
	for _, c := range mirrorCommands("eth0", "tap0") {
		got = append(got, strings.Join(c, " "))
	}
	want := []string{
		"ip link set dev tap0 up",
		"tc qdisc add dev eth0 ingress",
		"tc filter add dev eth0 parent ffff: protocol all u32 match u8 0 0 action mirred egress redirect dev tap0",
		"tc qdisc add dev tap0 ingress",
		"tc filter add dev tap0 parent ffff: protocol all u32 match u8 0 0 action mirred egress redirect dev eth0",
	}
	if !slices.Equal(got, want) {
		t.Fatalf("got %q", got)
	}
}

func TestSizeAndGuestPod(t *testing.T) {
	c := &Controller{cfg: Config{VCPUs: 1, MemMiB: 256, OverheadMiB: 32, MaxMemMiB: 4096,
		AllowedAnnotations: map[string]bool{AnnotationVCPUs: true, AnnotationMemMiB: true}}}
	size := func(p controller.PodSpec) (uint32, uint32) {
		t.Helper()
		v, m, err := c.size(p)
		if err != nil {
			t.Fatal(err)
		}
		return v, m
	}
	if v, m := size(controller.PodSpec{}); v != 1 || m != 288 {
		t.Fatalf("defaults: %d vcpus, %d MiB", v, m)
	}
	p := controller.PodSpec{ID: "p", Annotations: map[string]string{AnnotationVCPUs: "1", AnnotationMemMiB: "512"},
		Network: controller.NamespacePod, PID: controller.NamespaceContainer}
	if v, m := size(p); v != 1 || m != 544 {
		t.Fatalf("annotated: %d vcpus, %d MiB", v, m)
	}
	// Kata's model: the defaults plus what the containers ask for.
	r := controller.PodSpec{Resources: controller.Resources{CPUPeriod: 100000, CPUQuota: 50000, MemoryLimitBytes: 100<<20 + 1}}
	if v, m := size(r); int(v) != min(2, runtime.NumCPU()) || m != 256+101+32 {
		t.Fatalf("with resources: %d vcpus, %d MiB", v, m)
	}
	r.Resources.CPUQuota = 1000 * 100000
	if v, _ := size(r); int(v) != runtime.NumCPU() {
		t.Fatalf("vcpus %d not capped at the host's %d", v, runtime.NumCPU())
	}
	// Refused: what is not allowed, not a number, out of bounds, unknown.
	for _, a := range []map[string]string{
		{AnnotationMemMiB: "100000"},
		{AnnotationVCPUs: strconv.Itoa(runtime.NumCPU() + 1)},
		{AnnotationVCPUs: "0"},
		{AnnotationMemMiB: "lots"},
		{"io.katacontainers.config.hypervisor.path": "/bin/sh"},
	} {
		if _, _, err := c.size(controller.PodSpec{Annotations: a}); !errdefs.IsInvalidArgument(err) {
			t.Errorf("annotations %v: %v, want InvalidArgument", a, err)
		}
	}
	strict := &Controller{cfg: Config{VCPUs: 1, MemMiB: 256}}
	if _, _, err := strict.size(p); !errdefs.IsInvalidArgument(err) {
		t.Errorf("annotations without --vm-allowed-annotations: %v, want InvalidArgument", err)
	}
	if _, _, err := c.size(controller.PodSpec{Resources: controller.Resources{MemoryLimitBytes: 8 << 30}}); !errdefs.IsInvalidArgument(err) {
		t.Errorf("memory above --vm-max-memory-mib: %v", err)
	}
	g := guestPodSpec(p)
	if g.Network != controller.NamespaceNode || g.PID != controller.NamespaceContainer || g.ID != "p" || g.CgroupParent != "pods" {
		t.Fatalf("guest pod %v", g)
	}
	if vmID("0123456789abcdef0123") != "pod-0123456789abcdef" {
		t.Fatal(vmID("0123456789abcdef0123"))
	}
}

func TestShellQuote(t *testing.T) {
	if got := shellQuote([]string{"sh", "-c", "echo it's"}); got != `'sh' '-c' 'echo it'\''s'` {
		t.Fatal(got)
	}
}

func TestUnescapeMountPath(t *testing.T) {
	if got := unescapeMountPath(`/a\040b/c`); got != "/a b/c" {
		t.Fatal(got)
	}
}
