package netcni

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// fakeBinDir holds empty executables named like the plugins, enough for
// Status (cniVersion 1.0.0 configs are never asked for STATUS).
func fakeBinDir(t *testing.T, plugins ...string) string {
	dir := t.TempDir()
	for _, p := range plugins {
		if err := os.WriteFile(filepath.Join(dir, p), []byte("#!/bin/sh\nexit 1\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestWriteDefaultConfig(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "net.d")
	if err := WriteDefaultConfig(dir, ""); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, BridgeConfFile))
	if err != nil {
		t.Fatal(err)
	}
	var list struct {
		CNIVersion string `json:"cniVersion"`
		Name       string
		Plugins    []struct {
			Type      string
			Bridge    string
			IsGateway bool `json:"isGateway"`
			IPMasq    bool `json:"ipMasq"`
			IPAM      struct {
				Type   string
				Ranges [][]struct{ Subnet string }
			}
			Capabilities map[string]bool
		}
	}
	if err := json.Unmarshal(b, &list); err != nil {
		t.Fatal(err)
	}
	if list.Name != DefaultNetworkName || len(list.Plugins) != 2 {
		t.Fatalf("conflist = %s", b)
	}
	br, pm := list.Plugins[0], list.Plugins[1]
	if br.Type != "bridge" || br.Bridge != DefaultBridge || !br.IsGateway || !br.IPMasq ||
		br.IPAM.Type != "host-local" || br.IPAM.Ranges[0][0].Subnet != DefaultSubnet {
		t.Errorf("bridge plugin = %+v", br)
	}
	if pm.Type != "portmap" || !pm.Capabilities["portMappings"] {
		t.Errorf("portmap plugin = %+v", pm)
	}
	if b, err := os.ReadFile(filepath.Join(dir, LoopbackConfFile)); err != nil || !strings.Contains(string(b), `"loopback"`) {
		t.Errorf("loopback conf = %s, %v", b, err)
	}

	// A second call, or a dir with a config of its own, is left alone.
	if err := os.WriteFile(filepath.Join(dir, BridgeConfFile), []byte("{}"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := WriteDefaultConfig(dir, "10.99.0.0/16"); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, BridgeConfFile)); string(b) != "{}" {
		t.Errorf("existing config overwritten: %s", b)
	}
	if wrote, err := WriteBridgeConfig(t.TempDir(), BridgeConfig{Subnet: "10.1.2.3"}); err == nil || wrote {
		t.Errorf("bad subnet: wrote=%v err=%v", wrote, err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 2 {
		t.Errorf("conf dir holds %d files, want 2 (no temp files)", len(entries))
	}
}

// TestStatus walks a conf dir through missing, empty, written, broken and
// removed, and a bin dir through missing plugins, without root: Status
// reloads on every change.
func TestStatus(t *testing.T) {
	root := t.TempDir()
	confDir := filepath.Join(root, "net.d")
	// No portmap yet; no loopback ever (the Manager brings lo up itself).
	binDir := fakeBinDir(t, "bridge", "host-local")
	m, err := New(Config{ConfDir: confDir, BinDir: binDir, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	expect := func(want error, contains string) {
		t.Helper()
		err := m.Status()
		if want == nil {
			if err != nil {
				t.Fatalf("Status = %v, want nil", err)
			}
			return
		}
		if !errors.Is(err, want) || !strings.Contains(err.Error(), contains) {
			t.Fatalf("Status = %v, want %v mentioning %q", err, want, contains)
		}
	}

	expect(ErrNoConfig, "does not exist")
	if err := os.Mkdir(confDir, 0o755); err != nil {
		t.Fatal(err)
	}
	expect(ErrNoConfig, "no network config found in "+confDir)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := m.Setup(ctx, "p1", "/proc/self/ns/net", SetupOptions{}); !errors.Is(err, ErrNoConfig) {
		t.Fatalf("Setup without config = %v, want ErrNoConfig", err)
	}

	if err := WriteDefaultConfig(confDir, "10.250.255.0/24"); err != nil {
		t.Fatal(err)
	}
	expect(ErrPluginMissing, `plugin "portmap" not found in `+binDir)
	if err := os.WriteFile(filepath.Join(binDir, "portmap"), []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	expect(nil, "")
	if err := os.Remove(filepath.Join(binDir, "host-local")); err != nil {
		t.Fatal(err)
	}
	expect(ErrPluginMissing, `plugin "host-local"`)
	if err := os.WriteFile(filepath.Join(binDir, "host-local"), []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	expect(nil, "")

	// A broken default config (it sorts first) is reported, then fixed.
	broken := filepath.Join(confDir, "00-broken.conflist")
	if err := os.WriteFile(broken, []byte("{not json"), 0o644); err != nil {
		t.Fatal(err)
	}
	expect(ErrInvalidConfig, "00-broken.conflist")
	if err := os.Remove(broken); err != nil {
		t.Fatal(err)
	}
	expect(nil, "")

	// Another network written before ours becomes the default network.
	other := `{"cniVersion":"1.0.0","name":"other","plugins":[{"type":"macvlan"}]}`
	if err := os.WriteFile(filepath.Join(confDir, "05-other.conflist"), []byte(other), 0o644); err != nil {
		t.Fatal(err)
	}
	expect(ErrPluginMissing, `network "other": plugin "macvlan"`)
	m.mu.Lock()
	c := m.cni.all
	m.mu.Unlock()
	if name, ifName := defaultNetwork(c); name != "other" || ifName != "eth0" {
		t.Errorf("default network = %q on %q, want other on eth0", name, ifName)
	}

	for _, f := range []string{"05-other.conflist", BridgeConfFile, LoopbackConfFile} {
		if err := os.Remove(filepath.Join(confDir, f)); err != nil {
			t.Fatal(err)
		}
	}
	expect(ErrNoConfig, "no network config found")

	// A ConfigMap volume: the file is a symlink through ..data, and an
	// update swaps ..data to a new directory.
	version := func(name, plugin string) {
		t.Helper()
		d := filepath.Join(confDir, name)
		conf := `{"cniVersion":"1.0.0","name":"cm","plugins":[{"type":"` + plugin + `"}]}`
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "10-cm.conflist"), []byte(conf), 0o644); err != nil {
			t.Fatal(err)
		}
		tmp := filepath.Join(confDir, "..data_tmp")
		if err := os.Symlink(name, tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(confDir, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	version("..v1", "macvlan")
	if err := os.Symlink("..data/10-cm.conflist", filepath.Join(confDir, "10-cm.conflist")); err != nil {
		t.Fatal(err)
	}
	expect(ErrPluginMissing, `network "cm": plugin "macvlan"`)
	version("..v2", "bridge")
	expect(nil, "")
}

// TestTwoPodsReachEachOther sets up two pods on the bridge: distinct IPs, and
// a TCP server in one answers a client in the other.
func TestTwoPodsReachEachOther(t *testing.T) {
	e := newEnv(t)
	a := e.newPod(SetupOptions{Labels: map[string]string{"K8S_POD_NAME": "a", "K8S_POD_NAMESPACE": "default"}})
	b := e.newPod(SetupOptions{})
	e.setup(a)
	e.setup(b)
	if a.res.IPs[0].Equal(b.res.IPs[0]) {
		t.Fatalf("both pods got %s", a.res.IPs[0])
	}
	if got := len(e.reservations()); got != 2 {
		t.Errorf("host-local reserves %d IPs, want 2", got)
	}
	veths := e.bridgePorts()
	if len(veths) != 2 {
		t.Fatalf("bridge %s has ports %v, want 2", e.name, veths)
	}

	serve(t, a.netns, ":7777", "hello from a")
	addr := net.JoinHostPort(a.res.IPs[0].String(), "7777")
	got, err := fetch(b.netns, addr)
	if err != nil || got != "hello from a" {
		t.Fatalf("pod b → %s: %q, %v", addr, got, err)
	}
	// Its lo is up (the Manager's doing: no loopback plugin runs).
	if got, err := fetch(a.netns, "127.0.0.1:7777"); err != nil || got != "hello from a" {
		t.Fatalf("pod a → its own 127.0.0.1:7777: %q, %v", got, err)
	}

	e.teardown(a)
	e.teardown(b)
	e.assertReleased(a, veths)
	e.assertReleased(b, veths)
}

// TestPortMapping forwards 127.0.0.1:<hostPort> on the host to the pod.
func TestPortMapping(t *testing.T) {
	e := newEnv(t)
	hostPort, releasePort := reservePort(t)
	p := e.newPod(SetupOptions{PortMappings: []PortMapping{{
		Protocol: "TCP", ContainerPort: 8080, HostPort: int32(hostPort), HostIP: "127.0.0.1",
	}}})
	e.setup(p)
	veths := e.bridgePorts()
	serve(t, p.netns, ":8080", "hello through portmap")

	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(hostPort))
	got, err := fetch("", addr)
	if err != nil || got != "hello through portmap" {
		t.Fatalf("host → %s: %q, %v", addr, got, err)
	}

	e.teardown(p)
	e.assertReleased(p, veths)
	releasePort()
	if c, err := net.DialTimeout("tcp4", addr, time.Second); err == nil {
		c.Close()
		t.Errorf("%s still forwards after teardown", addr)
	}
}

// TestTeardownIdempotent tears down twice, and after the namespace is gone.
func TestTeardownIdempotent(t *testing.T) {
	e := newEnv(t)
	port, _ := reservePort(t)
	pm := []PortMapping{{Protocol: "tcp", ContainerPort: 80, HostPort: int32(port), HostIP: "127.0.0.1"}}

	p := e.newPod(SetupOptions{PortMappings: pm})
	e.setup(p)
	veths := e.bridgePorts()
	e.teardown(p)
	e.teardown(p)
	e.assertReleased(p, veths)

	// The namespace goes first (a crashed or killed pod): its veth dies with
	// it, and Teardown still releases the IP, the port mapping and the
	// masquerade rules.
	q := e.newPod(SetupOptions{PortMappings: pm})
	e.setup(q)
	veths = e.bridgePorts()
	if err := RemoveNetNS(q.netns); err != nil {
		t.Fatal(err)
	}
	e.teardown(q)
	e.teardown(q)
	e.assertReleased(q, veths)

	// A pod that was never set up.
	r := &pod{id: "never" + randomHex(t, 8), netns: filepath.Join(e.nsDir, "missing")}
	e.teardown(r)
}

// TestSetupFailureRollsBack makes portmap fail after bridge succeeded: Setup
// returns the error and leaves no veth, IP or rule behind.
func TestSetupFailureRollsBack(t *testing.T) {
	e := newEnv(t)
	port, _ := reservePort(t)
	p := e.newPod(SetupOptions{PortMappings: []PortMapping{{
		Protocol: "bogus", ContainerPort: 80, HostPort: int32(port), HostIP: "127.0.0.1",
	}}})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := e.m.Setup(ctx, p.id, p.netns, p.opts)
	if err == nil || !strings.Contains(err.Error(), "portmap") {
		t.Fatalf("Setup with protocol bogus = %+v, %v; want portmap's error", res, err)
	}
	t.Logf("Setup: %v", err)
	if ports := e.bridgePorts(); len(ports) != 0 {
		t.Errorf("veths %v left on the bridge", ports)
	}
	e.assertReleased(p, nil)
}

// TestConcurrentPods sets up and tears down pods at once.
func TestConcurrentPods(t *testing.T) {
	e := newEnv(t)
	const n = 4
	pods := make([]*pod, n)
	for i := range pods {
		pods[i] = e.newPod(SetupOptions{})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	errs := make(chan error, n)
	for _, p := range pods {
		go func() {
			res, err := e.m.Setup(ctx, p.id, p.netns, p.opts)
			p.res = res
			errs <- err
		}()
	}
	for range pods {
		if err := <-errs; err != nil {
			t.Fatalf("Setup: %v", err)
		}
	}
	seen := map[string]bool{}
	for _, p := range pods {
		ip := p.res.IPs[0].String()
		if seen[ip] {
			t.Fatalf("IP %s handed out twice", ip)
		}
		seen[ip] = true
	}
	veths := e.bridgePorts()
	if len(veths) != n {
		t.Fatalf("bridge has ports %v, want %d", veths, n)
	}
	for _, p := range pods {
		go func() { errs <- e.m.Teardown(ctx, p.id, p.netns, p.opts) }()
	}
	for range pods {
		if err := <-errs; err != nil {
			t.Fatalf("Teardown: %v", err)
		}
	}
	for _, p := range pods {
		e.assertReleased(p, veths)
	}
}
