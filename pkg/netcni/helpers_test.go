package netcni

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	cnilibrary "github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/plugins/pkg/utils"
	"golang.org/x/sys/unix"
)

// testEnv is one test's network: its conf dir, bridge, subnet, IPAM dir.
type testEnv struct {
	t       *testing.T
	m       *Manager
	name    string // network name and bridge name: aetest<hex>
	subnet  string
	dataDir string
	nsDir   string
}

// subnetSeq is where reserveSubnet starts looking.
var subnetSeq atomic.Uint32

func init() { subnetSeq.Store(uint32(os.Getpid() % 200)) }

// reserveSubnet picks a 10.250.x.0/24 that no interface of the host uses
// and no other test process holds: it binds the abstract unix socket
// "@aurae-netcni-test/10.250.x" until the test ends (the kernel frees it when
// the process dies, and it leaves no file).
func reserveSubnet(t *testing.T) string {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	start := subnetSeq.Add(1)
	for i := range uint32(250) {
		subnet := fmt.Sprintf("10.250.%d.0/24", (start+i)%250)
		_, ipnet, _ := net.ParseCIDR(subnet)
		inUse := false
		for _, a := range addrs {
			if an, ok := a.(*net.IPNet); ok && (ipnet.Contains(an.IP) || an.Contains(ipnet.IP)) {
				inUse = true
			}
		}
		if inUse {
			continue
		}
		l, err := net.Listen("unix", "@aurae-netcni-test/"+subnet)
		if err != nil {
			continue // another test process holds it
		}
		t.Cleanup(func() { l.Close() })
		return subnet
	}
	t.Fatal("no free subnet in 10.250.0.0/16")
	return ""
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Getuid() != 0 {
		t.Skip("needs root: creates network namespaces, a bridge and iptables rules")
	}
	if testBinDir == "" {
		t.Skip(skipReason)
	}
}

func randomHex(t *testing.T, n int) string {
	b := make([]byte, (n+1)/2)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)[:n]
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// newEnv writes a bridge network of the test's own and returns a Manager
// for it. Cleanup deletes the bridge.
func newEnv(t *testing.T) *testEnv {
	t.Helper()
	requireRoot(t)
	name := "aetest" + randomHex(t, 8)
	subnet := reserveSubnet(t)
	dir := t.TempDir()
	e := &testEnv{t: t, name: name, subnet: subnet,
		dataDir: filepath.Join(dir, "ipam"), nsDir: filepath.Join(dir, "netns")}
	confDir := filepath.Join(dir, "net.d")
	wrote, err := WriteBridgeConfig(confDir, BridgeConfig{
		NetworkName: name, Bridge: name, Subnet: subnet, DataDir: e.dataDir,
	})
	if err != nil || !wrote {
		t.Fatalf("WriteBridgeConfig: wrote=%v err=%v", wrote, err)
	}
	t.Cleanup(func() {
		if err := exec.Command("ip", "link", "del", name).Run(); err != nil {
			if out, _ := exec.Command("ip", "link", "show", name).CombinedOutput(); !strings.Contains(string(out), "does not exist") {
				t.Errorf("delete bridge %s: %v", name, err)
			}
		}
	})
	e.m, err = New(Config{ConfDir: confDir, BinDir: testBinDir, NetworkNamespacesDir: e.nsDir, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.m.Status(); err != nil {
		t.Fatalf("Status: %v", err)
	}
	return e
}

// pod is a network namespace set up (or to be set up) on the test network.
type pod struct {
	id    string
	netns string
	opts  SetupOptions
	res   *Result
}

// newPod creates a pinned network namespace; cleanup tears the pod's network
// down (a no-op when the test did) and removes the namespace.
func (e *testEnv) newPod(opts SetupOptions) *pod {
	t := e.t
	t.Helper()
	p := &pod{id: "pod" + randomHex(t, 16), opts: opts}
	var err error
	p.netns, err = e.m.NewNetNS(p.id)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := RemoveNetNS(p.netns); err != nil {
			t.Error(err)
		}
	})
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := e.m.Teardown(ctx, p.id, p.netns, p.opts); err != nil {
			t.Errorf("cleanup teardown: %v", err)
		}
		// Should a test have failed half way, leave no rule behind.
		e.sweepIPTables(p)
	})
	return p
}

func (e *testEnv) setup(p *pod) {
	t := e.t
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := e.m.Setup(ctx, p.id, p.netns, p.opts)
	if err != nil {
		t.Fatalf("Setup %s: %v", p.id, err)
	}
	_, ipnet, _ := net.ParseCIDR(e.subnet)
	if len(res.IPs) == 0 || !ipnet.Contains(res.IPs[0]) || res.Interface != "eth0" {
		t.Fatalf("Setup %s: result %+v, want an IP in %s on eth0", p.id, res, e.subnet)
	}
	p.res = res
}

func (e *testEnv) teardown(p *pod) {
	t := e.t
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := e.m.Teardown(ctx, p.id, p.netns, p.opts); err != nil {
		t.Fatalf("Teardown %s: %v", p.id, err)
	}
}

// bridgePorts lists the host-side veths attached to the test bridge.
func (e *testEnv) bridgePorts() []string {
	out, err := exec.Command("ip", "-o", "link", "show", "master", e.name).CombinedOutput()
	if err != nil {
		e.t.Fatalf("ip link show master %s: %v: %s", e.name, err, out)
	}
	var names []string
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if f := strings.Fields(line); len(f) > 1 {
			names = append(names, strings.SplitN(strings.TrimSuffix(f[1], ":"), "@", 2)[0])
		}
	}
	return names
}

// reservations lists the IPs host-local holds in the test's data dir.
func (e *testEnv) reservations() []string {
	entries, err := os.ReadDir(filepath.Join(e.dataDir, e.name))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		e.t.Fatal(err)
	}
	var ips []string
	for _, en := range entries {
		if net.ParseIP(en.Name()) != nil {
			ips = append(ips, en.Name())
		}
	}
	return ips
}

// assertReleased checks that nothing of p is left on the host: no veth, no
// IP reservation, no iptables rule or chain, no libcni cache entry.
func (e *testEnv) assertReleased(p *pod, veths []string) {
	t := e.t
	t.Helper()
	for _, v := range veths {
		// The kernel destroys a removed namespace, and with it the veth
		// pair, asynchronously (its cleanup work queue): allow it a moment.
		deadline := time.Now().Add(10 * time.Second)
		for exec.Command("ip", "link", "show", v).Run() == nil {
			if time.Now().After(deadline) {
				t.Errorf("veth %s of pod %s left behind", v, p.id)
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	if ips := e.reservations(); len(ips) > 0 {
		t.Errorf("host-local still reserves %v", ips)
	}
	out, err := exec.Command("iptables-save").CombinedOutput()
	if err != nil {
		t.Fatalf("iptables-save: %v: %s", err, out)
	}
	tokens := []string{p.id, e.name,
		utils.FormatChainName(e.name, p.id),
		utils.MustFormatChainNameWithPrefix(e.name, p.id, "DN-")}
	if p.res != nil {
		for _, ip := range p.res.IPs {
			tokens = append(tokens, ip.String()+"/", ip.String()+":")
		}
	}
	for _, line := range strings.Split(string(out), "\n") {
		for _, tok := range tokens {
			if strings.Contains(line, tok) {
				t.Errorf("iptables rule of pod %s left behind: %s", p.id, line)
				break
			}
		}
	}
	if entries, _ := os.ReadDir(filepath.Join(cnilibrary.CacheDir, "results")); len(entries) > 0 {
		for _, en := range entries {
			if strings.Contains(en.Name(), p.id) {
				t.Errorf("libcni cache entry %s left behind", en.Name())
			}
		}
	}
}

// sweepIPTables removes what is left of p's iptables rules and chains; it
// finds nothing after a successful Teardown.
func (e *testEnv) sweepIPTables(p *pod) {
	out, err := exec.Command("iptables-save", "-t", "nat").Output()
	if err != nil {
		return
	}
	var rules, chains []string
	for _, c := range []string{utils.FormatChainName(e.name, p.id), utils.MustFormatChainNameWithPrefix(e.name, p.id, "DN-")} {
		if strings.Contains(string(out), ":"+c+" ") {
			chains = append(chains, c)
		}
	}
	for _, line := range strings.Split(string(out), "\n") {
		if !strings.HasPrefix(line, "-A ") {
			continue
		}
		inOwnChain := false
		for _, c := range chains {
			inOwnChain = inOwnChain || strings.HasPrefix(line, "-A "+c+" ")
		}
		if !inOwnChain && strings.Contains(line, p.id) {
			rules = append(rules, line)
		}
	}
	if err := deleteNATRules(rules, chains); err != nil {
		e.t.Errorf("sweep iptables of pod %s: %v", p.id, err)
	}
}

// inNetNS runs f on a thread that joined the network namespace at path.
// Sockets f creates stay in that namespace. The thread is discarded after.
func inNetNS(path string, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with us
		fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- err
			return
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns %s: %w", path, err)
			return
		}
		errc <- f()
	}()
	return <-errc
}

// serve listens on addr inside the namespace and answers every connection
// with reply. The listener closes at the end of the test.
func serve(t *testing.T, netns, addr, reply string) {
	t.Helper()
	var ln net.Listener
	if err := inNetNS(netns, func() (err error) {
		ln, err = net.Listen("tcp4", addr)
		return err
	}); err != nil {
		t.Fatalf("listen in %s: %v", netns, err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { ln.Close(); <-done })
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			_, _ = io.WriteString(c, reply)
			c.Close()
		}
	}()
}

// fetch dials addr (from netns, or the host's namespace when "") and
// returns what the server says, retrying for a few seconds while the
// network settles.
func fetch(netns, addr string) (string, error) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		var got string
		dial := func() error {
			c, err := net.DialTimeout("tcp4", addr, 2*time.Second)
			if err != nil {
				return err
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			b, err := io.ReadAll(c)
			got = string(b)
			return err
		}
		var err error
		if netns == "" {
			err = dial()
		} else {
			err = inNetNS(netns, dial)
		}
		if err == nil || time.Now().After(deadline) {
			return got, err
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// reservePort returns a TCP port of 127.0.0.1 that stays bound until the
// test ends or release is called, so that no other process picks it for a
// mapping of its own. The binding does not get in portmap's way: its DNAT
// applies before local delivery.
func reservePort(t *testing.T) (port int, release func()) {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	release = func() { ln.Close() }
	t.Cleanup(release)
	return ln.Addr().(*net.TCPAddr).Port, release
}
