package vm

import (
	"runtime"
	"slices"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	podsv0 "github.com/aurae-runtime/aurae-cri/api/pods/v0"
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

func TestShareMountsDropsPodFiles(t *testing.T) {
	sp := &specs.Spec{Mounts: []specs.Mount{
		{Destination: "/proc", Type: "proc", Source: "proc"},
		{Destination: "/etc/hosts", Type: "bind", Source: "/host/pod/hosts", Options: []string{"rbind"}},
		{Destination: "/etc/resolv.conf", Source: "/host/pod/resolv.conf", Options: []string{"bind", "ro"}},
	}}
	podFile, err := shareMounts(sp, []string{"/host/pod/hostname", "/host/pod/resolv.conf", "/host/pod/hosts"}, "/h", "/g")
	if err != nil {
		t.Fatal(err)
	}
	if !podFile || len(sp.Mounts) != 1 || sp.Mounts[0].Destination != "/proc" {
		t.Fatalf("podFile %v, mounts %+v", podFile, sp.Mounts)
	}
}

func TestSizeAndGuestPod(t *testing.T) {
	c := &Controller{cfg: Config{VCPUs: 1, MemMiB: 256, OverheadMiB: 32}}
	if v, m := c.size(&podsv0.Pod{}); v != 1 || m != 288 {
		t.Fatalf("defaults: %d vcpus, %d MiB", v, m)
	}
	p := &podsv0.Pod{Id: "p", Annotations: map[string]string{AnnotationVCPUs: "2", AnnotationMemMiB: "512"},
		Namespaces: &podsv0.NamespaceOptions{Network: podsv0.NamespaceMode_NAMESPACE_MODE_POD, Pid: podsv0.NamespaceMode_NAMESPACE_MODE_CONTAINER}}
	if v, m := c.size(p); int(v) != min(2, runtime.NumCPU()) || m != 544 {
		t.Fatalf("annotated: %d vcpus, %d MiB", v, m)
	}
	// Kata's model: the defaults plus what the containers ask for.
	r := &podsv0.Pod{Resources: &podsv0.PodResources{CpuPeriod: 100000, CpuQuota: 50000, MemoryLimitBytes: 100<<20 + 1}}
	if v, m := c.size(r); int(v) != min(2, runtime.NumCPU()) || m != 256+101+32 {
		t.Fatalf("with resources: %d vcpus, %d MiB", v, m)
	}
	r.Resources.CpuQuota = 1000 * 100000
	if v, _ := c.size(r); int(v) != runtime.NumCPU() {
		t.Fatalf("vcpus %d not capped at the host's %d", v, runtime.NumCPU())
	}
	g := guestPodSpec(p)
	if g.GetNamespaces().GetNetwork() != podsv0.NamespaceMode_NAMESPACE_MODE_NODE || g.GetNamespaces().GetPid() != podsv0.NamespaceMode_NAMESPACE_MODE_CONTAINER || g.GetId() != "p" {
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
