package netcni

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
)

// Fake plugins let the non-root tests see what the Manager hands to plugins
// and how it reads their answers. The test binary is the plugin: fakeBin
// links it under plugin names, and TestMain runs fakePlugin when it is started
// with fakePluginEnv set (libcni passes the test's environment on).
const (
	fakePluginEnv = "NETCNI_FAKE_PLUGIN_DIR" // where plugins record their calls
	fakeIP        = "10.9.0.5"
)

// fakePlugin answers one CNI call: VERSION; ADD returns prevResult when
// chained, else eth0 with fakeIP (lo with 127.0.0.1 for loopback); DEL does
// nothing; STATUS fails while <dir>/status-fail exists. Every call is recorded as <dir>/<plugin>-<command>-<container>,
// holding CNI_ARGS and the config on two lines. ADD of "fakenet" waits while
// <dir>/block exists.
func fakePlugin(dir, name string) int {
	stdin, _ := io.ReadAll(os.Stdin)
	cmd, id := os.Getenv("CNI_COMMAND"), os.Getenv("CNI_CONTAINERID")
	var conf struct {
		CNIVersion string          `json:"cniVersion"`
		PrevResult json.RawMessage `json:"prevResult"`
	}
	_ = json.Unmarshal(stdin, &conf)
	record := filepath.Join(dir, name+"-"+cmd+"-"+id)
	_ = os.WriteFile(record, []byte(os.Getenv("CNI_ARGS")+"\n"+string(stdin)+"\n"), 0o644)
	switch cmd {
	case "VERSION":
		fmt.Print(`{"cniVersion":"1.1.0","supportedVersions":["0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"]}`)
	case "ADD":
		if name == "fakenet" {
			for {
				if _, err := os.Stat(filepath.Join(dir, "block")); err != nil {
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
		}
		switch {
		case len(conf.PrevResult) > 0:
			_, _ = os.Stdout.Write(conf.PrevResult)
		case name == "loopback":
			fmt.Printf(`{"cniVersion":%q,"interfaces":[{"name":"lo","sandbox":%q}],"ips":[{"version":"4","address":"127.0.0.1/8","interface":0}]}`,
				conf.CNIVersion, os.Getenv("CNI_NETNS"))
		default:
			fmt.Printf(`{"cniVersion":%q,"interfaces":[{"name":%q,"sandbox":%q}],"ips":[{"address":"%s/24","interface":0}]}`,
				conf.CNIVersion, os.Getenv("CNI_IFNAME"), os.Getenv("CNI_NETNS"), fakeIP)
		}
	case "STATUS":
		if _, err := os.Stat(filepath.Join(dir, "status-fail")); err == nil {
			fmt.Printf(`{"cniVersion":%q,"code":50,"msg":"fake %s not available"}`, conf.CNIVersion, name)
			return 1
		}
	case "DEL", "CHECK", "GC":
	default:
		fmt.Fprintf(os.Stderr, "fake plugin %s: unknown command %q\n", name, cmd)
		return 1
	}
	return 0
}

// fakeEnv is a Manager whose plugins are fakes: a conf dir with the network
// "fake" (fakenet + fakeportmap) and a bin dir with fakenet, fakeportmap and
// loopback.
type fakeEnv struct {
	m       *Manager
	confDir string
	calls   string // the plugins' records
}

func newFakeEnv(t *testing.T) *fakeEnv {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	e := &fakeEnv{confDir: filepath.Join(root, "net.d"), calls: filepath.Join(root, "calls")}
	bin := filepath.Join(root, "bin")
	for _, d := range []string{e.confDir, e.calls, bin} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []string{"fakenet", "fakeportmap", "loopback"} {
		if err := os.Symlink(exe, filepath.Join(bin, p)); err != nil {
			t.Fatal(err)
		}
	}
	conf := `{"cniVersion":"1.0.0","name":"fake","plugins":[
		{"type":"fakenet","capabilities":{"dns":true}},
		{"type":"fakeportmap","capabilities":{"portMappings":true}}]}`
	if err := os.WriteFile(filepath.Join(e.confDir, "10-fake.conflist"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv(fakePluginEnv, e.calls)
	// A -race binary sleeps a second at exit by default; plugins need not.
	t.Setenv("GORACE", strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	e.m, err = New(Config{ConfDir: e.confDir, BinDir: bin, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	// No network namespaces here: record what would be brought up.
	e.m.loopback = func(netnsPath string) error {
		return os.WriteFile(filepath.Join(e.calls, "lo-up-"+filepath.Base(netnsPath)), nil, 0o644)
	}
	if err := e.m.Status(); err != nil {
		t.Fatal(err)
	}
	return e
}

// call returns the CNI_ARGS and config a plugin got, failing when it was
// not called.
func (e *fakeEnv) call(t *testing.T, plugin, cmd, id string) (args, conf string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(e.calls, plugin+"-"+cmd+"-"+id))
	if err != nil {
		t.Fatalf("%s %s of %s: %v", plugin, cmd, id, err)
	}
	args, conf, _ = strings.Cut(string(b), "\n")
	return args, conf
}

// TestSetupOptionsReachPlugins checks what the plugins receive (port
// mappings, labels as CNI_ARGS, DNS) and how the result is read.
func TestSetupOptionsReachPlugins(t *testing.T) {
	e := newFakeEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	opts := SetupOptions{
		PortMappings: []PortMapping{
			{Protocol: "TCP", ContainerPort: 80, HostPort: 8080, HostIP: "127.0.0.1"},
			{Protocol: "UDP", ContainerPort: 53}, // no host port: not mapped
			{ContainerPort: 443, HostPort: 8443},
		},
		Labels: map[string]string{"K8S_POD_NAME": "web", "K8S_POD_NAMESPACE": "default"},
		DNS:    &DNS{Servers: []string{"10.96.0.10"}, Searches: []string{"svc.cluster.local"}},
	}
	res, err := e.m.Setup(ctx, "pod1", "/var/run/netns/fake", opts)
	if err != nil {
		t.Fatal(err)
	}
	if res.Interface != "eth0" || len(res.IPs) != 1 || res.IPs[0].String() != fakeIP {
		t.Errorf("result = %+v, want %s on eth0", res, fakeIP)
	}

	args, conf := e.call(t, "fakeportmap", "ADD", "pod1")
	for _, want := range []string{"IgnoreUnknown=1", "K8S_POD_NAME=web", "K8S_POD_NAMESPACE=default"} {
		if !strings.Contains(args, want) {
			t.Errorf("CNI_ARGS %q lacks %s", args, want)
		}
	}
	// go-cni's capability structs carry no JSON tags: plugins read the
	// field names case-insensitively, as encoding/json does here.
	var got struct {
		RuntimeConfig struct {
			PortMappings []PortMapping
			DNS          DNS
		}
	}
	if err := json.Unmarshal([]byte(conf), &got); err != nil {
		t.Fatal(err)
	}
	want := []PortMapping{
		{Protocol: "tcp", ContainerPort: 80, HostPort: 8080, HostIP: "127.0.0.1"},
		{Protocol: "tcp", ContainerPort: 443, HostPort: 8443},
	}
	if !reflect.DeepEqual(got.RuntimeConfig.PortMappings, want) {
		t.Errorf("portmap got portMappings %+v, want %+v", got.RuntimeConfig.PortMappings, want)
	}
	_, conf = e.call(t, "fakenet", "ADD", "pod1")
	got.RuntimeConfig.DNS = DNS{}
	if err := json.Unmarshal([]byte(conf), &got); err != nil {
		t.Fatal(err)
	}
	if d := got.RuntimeConfig.DNS; !reflect.DeepEqual(d.Servers, opts.DNS.Servers) || !reflect.DeepEqual(d.Searches, opts.DNS.Searches) {
		t.Errorf("fakenet got DNS %+v, want %+v", d, *opts.DNS)
	}
	// lo is brought up by the Manager, not by the loopback plugin.
	if _, err := os.Stat(filepath.Join(e.calls, "lo-up-fake")); err != nil {
		t.Errorf("lo of the pod's namespace not brought up: %v", err)
	}
	if _, err := os.Stat(filepath.Join(e.calls, "loopback-ADD-pod1")); err == nil {
		t.Error("the loopback plugin ran")
	}

	// Teardown hands portmap the mappings again.
	if err := e.m.Teardown(ctx, "pod1", "/var/run/netns/fake", opts); err != nil {
		t.Fatal(err)
	}
	if _, conf := e.call(t, "fakeportmap", "DEL", "pod1"); !strings.Contains(conf, `"HostPort":8080`) {
		t.Errorf("portmap DEL config lacks the mappings: %s", conf)
	}
}

// TestStatusNotBlockedBySetup changes the config while a Setup waits in a
// plugin: Status answers at once, from the new config.
func TestStatusNotBlockedBySetup(t *testing.T) {
	e := newFakeEnv(t)
	block := filepath.Join(e.calls, "block")
	if err := os.WriteFile(block, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := e.m.Setup(ctx, "slow", "/var/run/netns/slow", SetupOptions{})
		done <- err
	}()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := os.Stat(filepath.Join(e.calls, "fakenet-ADD-slow")); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("fakenet ADD never started")
		}
		time.Sleep(10 * time.Millisecond)
	}

	if err := os.Remove(filepath.Join(e.confDir, "10-fake.conflist")); err != nil {
		t.Fatal(err)
	}
	status := make(chan error, 1)
	go func() { status <- e.m.Status() }()
	select {
	case err := <-status:
		if !errors.Is(err, ErrNoConfig) {
			t.Errorf("Status after removing the config = %v, want ErrNoConfig", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Status blocked behind a Setup in flight")
	}

	if err := os.Remove(block); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Errorf("Setup in flight = %v, want it to finish on the config it started with", err)
	}
}

// TestStatusAsksPlugins: with a cniVersion 1.1.0 config, Status reports a
// plugin's failed STATUS.
func TestStatusAsksPlugins(t *testing.T) {
	e := newFakeEnv(t)
	conf := `{"cniVersion":"1.1.0","name":"fake","plugins":[{"type":"fakenet"},{"type":"fakeportmap"}]}`
	if err := os.WriteFile(filepath.Join(e.confDir, "10-fake.conflist"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := e.m.Status(); err != nil {
		t.Fatalf("Status = %v, want nil", err)
	}
	e.call(t, "fakenet", "STATUS", "")
	if err := os.WriteFile(filepath.Join(e.calls, "status-fail"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := e.m.Status(); err == nil || !strings.Contains(err.Error(), "fake fakenet not available") {
		t.Fatalf("Status = %v, want fakenet's STATUS error", err)
	}
}

// TestArgsInjectionRefused: CNI_ARGS is "K=V;K=V": a value with ';' or '='
// (a pod named "inj;IP=10.88.0.77") or a control character is refused as an
// invalid argument before any plugin runs, at Setup and at Teardown.
func TestArgsInjectionRefused(t *testing.T) {
	e := newFakeEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, labels := range []map[string]string{
		{"K8S_POD_NAME": "inj;IP=10.88.0.77"},
		{"K8S_POD_NAMESPACE": "a=b"},
		{"K8S_POD_UID": "x\ny"},
		{"IP=10.88.0.77;K8S_POD_NAME": "x"},
		{"": "x"},
	} {
		opts := SetupOptions{Labels: labels}
		if _, err := e.m.Setup(ctx, "inj", "/var/run/netns/fake", opts); !errdefs.IsInvalidArgument(err) {
			t.Errorf("setup with %q: %v, want an invalid argument", labels, err)
		}
		if err := e.m.Teardown(ctx, "inj", "/var/run/netns/fake", opts); !errdefs.IsInvalidArgument(err) {
			t.Errorf("teardown with %q: %v, want an invalid argument", labels, err)
		}
	}
	if ents, _ := os.ReadDir(e.calls); len(ents) != 0 {
		t.Errorf("plugins ran: %v", ents)
	}
}

// TestPortmapOnlyWithHostPorts: a pod without host ports is set up and torn
// down without the portmap plugin, with the same result; a pod with some
// gets it, with its mappings, and a portmap that comes first in its chain
// is always run.
func TestPortmapOnlyWithHostPorts(t *testing.T) {
	e := newFakeEnv(t)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(exe, filepath.Join(filepath.Dir(e.calls), "bin", "portmap")); err != nil {
		t.Fatal(err)
	}
	conf := `{"cniVersion":"1.0.0","name":"fake","plugins":[
		{"type":"fakenet","capabilities":{"dns":true},"extra":{"kept":"as is"}},
		{"type":"portmap","capabilities":{"portMappings":true},"snat":true},
		{"type":"fakeportmap"}]}`
	if err := os.WriteFile(filepath.Join(e.confDir, "10-fake.conflist"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ran := func(plugin, cmd, id string) bool {
		_, err := os.Stat(filepath.Join(e.calls, plugin+"-"+cmd+"-"+id))
		return err == nil
	}

	noPorts := SetupOptions{PortMappings: []PortMapping{{ContainerPort: 80}}} // no host port
	res, err := e.m.Setup(ctx, "plain", "/var/run/netns/plain", noPorts)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.IPs) != 1 || res.IPs[0].String() != fakeIP {
		t.Errorf("result = %+v, want %s", res, fakeIP)
	}
	if ran("portmap", "ADD", "plain") {
		t.Error("portmap ran for a pod without host ports")
	}
	// The other plugins got their config unchanged.
	if _, conf := e.call(t, "fakenet", "ADD", "plain"); !strings.Contains(conf, `"extra":{"kept":"as is"}`) {
		t.Errorf("fakenet config = %s", conf)
	}
	if _, conf := e.call(t, "fakeportmap", "ADD", "plain"); !strings.Contains(conf, fakeIP) {
		t.Errorf("the plugin after portmap lacks the previous result: %s", conf)
	}
	if err := e.m.Teardown(ctx, "plain", "/var/run/netns/plain", noPorts); err != nil {
		t.Fatal(err)
	}
	if ran("portmap", "DEL", "plain") || !ran("fakenet", "DEL", "plain") {
		t.Error("teardown without host ports: portmap ran, or fakenet did not")
	}

	ports := SetupOptions{PortMappings: []PortMapping{{ContainerPort: 80, HostPort: 8080}}}
	if _, err := e.m.Setup(ctx, "web", "/var/run/netns/web", ports); err != nil {
		t.Fatal(err)
	}
	if _, conf := e.call(t, "portmap", "ADD", "web"); !strings.Contains(conf, `"HostPort":8080`) || !strings.Contains(conf, `"snat":true`) {
		t.Errorf("portmap ADD config = %s", conf)
	}
	if err := e.m.Teardown(ctx, "web", "/var/run/netns/web", ports); err != nil {
		t.Fatal(err)
	}
	if _, conf := e.call(t, "portmap", "DEL", "web"); !strings.Contains(conf, `"HostPort":8080`) {
		t.Errorf("portmap DEL config = %s", conf)
	}

	// portmap first in its chain fails without a previous result, ports or
	// not: it is not left out.
	conf = `{"cniVersion":"1.0.0","name":"fake","plugins":[{"type":"portmap"},{"type":"fakenet"}]}`
	if err := os.WriteFile(filepath.Join(e.confDir, "10-fake.conflist"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := e.m.Setup(ctx, "first", "/var/run/netns/first", SetupOptions{}); err != nil {
		t.Fatal(err)
	}
	if !ran("portmap", "ADD", "first") {
		t.Error("a portmap first in its chain was left out")
	}
}
