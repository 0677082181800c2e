package main

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aurae-runtime/aurae-cri/pkg/metrics"
)

func TestConfigFileAndFlags(t *testing.T) {
	file := filepath.Join(t.TempDir(), "aurae-cri.toml")
	if err := os.WriteFile(file, []byte(`
socket = "/run/x/cri.sock"
state-dir = "/var/lib/x"
cni-conf-dir = "/etc/x/net.d"
log-level = "debug"
write-default-cni-config = true
`), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := parseConfig([]string{"--config", file, "--state-dir", "/srv/state"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Socket != "/run/x/cri.sock" || cfg.CNIConfDir != "/etc/x/net.d" || cfg.LogLevel != "debug" || !cfg.DefaultCNIConfig {
		t.Fatalf("file not applied: %+v", cfg)
	}
	if cfg.StateDir != "/srv/state" {
		t.Fatalf("flag did not win over the file: %q", cfg.StateDir)
	}
	if cfg.CNIBinDir != "/opt/cni/bin" {
		t.Fatalf("default lost: %q", cfg.CNIBinDir)
	}
}

func TestConfigRefusesBadValues(t *testing.T) {
	bad := filepath.Join(t.TempDir(), "bad.toml")
	if err := os.WriteFile(bad, []byte("no-such-key = 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"--socket", "relative.sock"},
		{"--log-level", "loud"},
		{"--registry-config-dir", "certs.d"},
		{"--config", bad},
		{"--config", "/nonexistent/file.toml"},
		{"extra-arg"},
		{"--vm-allowed-annotations", "io.katacontainers.config.hypervisor.path"},
		{"--cdi-spec-dirs", "/etc/cdi,cdi"},
		{"--pids-limit", "-1"},
		{"--otlp-endpoint", "10.0.0.1:4317"},
		{"--otlp-endpoint", "collector"},
		{"--pids-limit", "many"},
	} {
		if _, err := parseConfig(args); err == nil {
			t.Errorf("%q accepted", args)
		}
	}
}

func TestVMAllowedAnnotations(t *testing.T) {
	cfg, err := parseConfig([]string{"--vm-allowed-annotations", "io.katacontainers.config.hypervisor.default_memory, io.katacontainers.config.hypervisor.default_vcpus"})
	if err != nil {
		t.Fatal(err)
	}
	a, err := cfg.allowedAnnotations()
	if err != nil || len(a) != 2 {
		t.Fatalf("allowed %v %v", a, err)
	}
	if cfg, _ := parseConfig(nil); cfg.VMAllowedAnnotations != "" || cfg.VMMaxMemMiB != 8192 {
		t.Fatalf("defaults %+v", cfg)
	}
}

func TestCDISpecDirs(t *testing.T) {
	if cfg, _ := parseConfig(nil); cfg.CDISpecDirs != "/etc/cdi,/var/run/cdi" {
		t.Fatalf("default %q", cfg.CDISpecDirs)
	}
	file := filepath.Join(t.TempDir(), "aurae-cri.toml")
	if err := os.WriteFile(file, []byte(`cdi-spec-dirs = "/srv/cdi"`+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := parseConfig([]string{"--config", file})
	if err != nil || cfg.CDISpecDirs != "/srv/cdi" {
		t.Fatalf("from the file: %q %v", cfg.CDISpecDirs, err)
	}
	cfg, err = parseConfig([]string{"--config", file, "--cdi-spec-dirs", ""})
	if err != nil || cfg.CDISpecDirs != "" {
		t.Fatalf("flag did not win over the file: %q %v", cfg.CDISpecDirs, err)
	}
}

func TestPidsLimit(t *testing.T) {
	if cfg, _ := parseConfig(nil); cfg.PidsLimit != 0 {
		t.Fatalf("default %d, want 0 (none)", cfg.PidsLimit)
	}
	file := filepath.Join(t.TempDir(), "aurae-cri.toml")
	if err := os.WriteFile(file, []byte("pids-limit = 1024\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if cfg, err := parseConfig([]string{"--config", file}); err != nil || cfg.PidsLimit != 1024 {
		t.Fatalf("from the file: %d %v", cfg.PidsLimit, err)
	}
	if cfg, err := parseConfig([]string{"--config", file, "--pids-limit", "64"}); err != nil || cfg.PidsLimit != 64 {
		t.Fatalf("the flag over the file: %d %v", cfg.PidsLimit, err)
	}
}

func TestMetricsAddress(t *testing.T) {
	for _, addr := range []string{"127.0.0.1:9898", "[::1]:0", "localhost:9898"} {
		cfg, err := parseConfig([]string{"--metrics-address", addr})
		if err != nil || cfg.MetricsAddress != addr {
			t.Errorf("--metrics-address %s: %q, %v", addr, cfg.MetricsAddress, err)
		}
	}
	// aurae-cri has no TLS: any other address is refused, saying why.
	for _, addr := range []string{"0.0.0.0:9898", ":9898", "192.0.2.1:9898", "node.example:9898"} {
		_, err := parseConfig([]string{"--metrics-address", addr})
		if !errors.Is(err, metrics.ErrNotLoopback) || !strings.Contains(err.Error(), "loopback") {
			t.Errorf("--metrics-address %s: %v, want ErrNotLoopback", addr, err)
		}
	}
	if _, err := parseConfig([]string{"--metrics-address", "9898"}); err == nil {
		t.Error("--metrics-address without a port accepted")
	}
	if cfg, err := parseConfig(nil); err != nil || cfg.MetricsAddress != "" {
		t.Errorf("metrics on by default: %q, %v", cfg.MetricsAddress, err)
	}
}

func TestNRIFlags(t *testing.T) {
	cfg, err := parseConfig(nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.EnableNRI || cfg.NRISocket != "/var/run/nri/nri.sock" || cfg.NRIRequestTimeout != duration(2*time.Second) || cfg.NRIRegistrationTimeout != duration(5*time.Second) {
		t.Errorf("NRI defaults: %+v", cfg)
	}
	file := filepath.Join(t.TempDir(), "nri.toml")
	if err := os.WriteFile(file, []byte("enable-nri = true\nnri-socket = \"/run/x/nri.sock\"\nnri-plugin-request-timeout = \"3s\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err = parseConfig([]string{"--config", file, "--nri-plugin-registration-timeout", "7s"})
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.EnableNRI || cfg.NRISocket != "/run/x/nri.sock" || cfg.NRIRequestTimeout != duration(3*time.Second) || cfg.NRIRegistrationTimeout != duration(7*time.Second) {
		t.Errorf("NRI from file and flags: %+v", cfg)
	}
	for _, args := range [][]string{
		{"--enable-nri", "--nri-socket", "nri.sock"},
		{"--enable-nri", "--nri-plugin-request-timeout", "0s"},
	} {
		if _, err := parseConfig(args); err == nil {
			t.Errorf("%v accepted", args)
		}
	}
}
