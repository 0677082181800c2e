package main

import (
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/aurae-runtime/aurae-cri/pkg/aurae/pods"
	"github.com/aurae-runtime/aurae-cri/pkg/metrics"
)

func TestParseFlags(t *testing.T) {
	cfg, err := parseFlags(nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.socket != "/run/aurae/aurae.sock" || cfg.stateDir != "/var/lib/aurae" || cfg.logLevel != slog.LevelInfo ||
		cfg.stopGracePeriod != 10*time.Second || cfg.cgroupRoot != "aurae" || cfg.listen != "" {
		t.Fatalf("defaults = %+v", cfg)
	}
	cfg, err = parseFlags([]string{"--log-level", "debug", "--listen", "127.0.0.1:0", "--tls-cert", "c", "--tls-key", "k", "--client-ca", "ca"})
	if err != nil || cfg.logLevel != slog.LevelDebug || cfg.listen != "127.0.0.1:0" {
		t.Fatalf("got %+v, %v", cfg, err)
	}
	cfg, err = parseFlags([]string{"--oci-runtime", "/usr/bin/crun", "--allow-old-oci-runtime"})
	if err != nil || cfg.ociRuntime != "/usr/bin/crun" || !cfg.allowOldRuntime {
		t.Fatalf("got %+v, %v", cfg, err)
	}
	if cfg, _ := parseFlags(nil); cfg.ociRuntime != pods.DefaultRuntime() || cfg.allowOldRuntime {
		t.Errorf("OCI runtime defaults: %q, allow old %v; want %q, false", cfg.ociRuntime, cfg.allowOldRuntime, pods.DefaultRuntime())
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--listen", "127.0.0.1:0"}, "mutual TLS"},
		{[]string{"--listen", "127.0.0.1:0", "--tls-cert", "c", "--tls-key", "k"}, "mutual TLS"},
		{[]string{"--tls-cert", "c"}, "--listen"},
		{[]string{"--log-level", "loud"}, "--log-level"},
		{[]string{"--stop-grace-period", "0s"}, "--stop-grace-period"},
		{[]string{"extra"}, "unexpected arguments"},
		{[]string{"--oci-runtime", ""}, "--oci-runtime"},
	} {
		if _, err := parseFlags(tc.args); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("parseFlags(%q) = %v, want an error about %s", tc.args, err, tc.want)
		}
	}
}

func TestParsePeerFlags(t *testing.T) {
	cfg, err := parseFlags([]string{"--node-name", "a", "--peer", "b=127.0.0.1:1", "--peer", "c=tcp://[::1]:2",
		"--peer-cert", "c", "--peer-key", "k", "--peer-ca", "ca", "--cri-endpoint", "unix:///run/cri.sock"})
	if err != nil {
		t.Fatal(err)
	}
	if d, _ := parseFlags(nil); d.vmImageDir != "/var/lib/aurae/vm" || d.nodeName != "" || len(d.peers) != 0 || d.criEndpoint != "" {
		t.Errorf("node defaults = %+v", d)
	}
	if cfg.nodeName != "a" || len(cfg.peers) != 2 || cfg.peers["b"] != "127.0.0.1:1" || cfg.peers["c"] != "tcp://[::1]:2" || cfg.criEndpoint != "unix:///run/cri.sock" {
		t.Fatalf("got %+v", cfg)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--peer", "b=127.0.0.1:1"}, "--peer-cert"},
		{[]string{"--peer", "b"}, "name=host:port"},
		{[]string{"--peer", "b=nohost"}, "missing port"},
		{[]string{"--peer", "b=h:1", "--peer", "b=h:2"}, "twice"},
		{[]string{"--cri-endpoint", "/run/cri.sock"}, "unix:///"},
	} {
		if _, err := parseFlags(tc.args); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("parseFlags(%q) = %v, want an error about %s", tc.args, err, tc.want)
		}
	}
}

func TestMetricsAddressFlag(t *testing.T) {
	for _, args := range [][]string{
		{"--metrics-address", "127.0.0.1:9899"},
		{"--metrics-address", "[::1]:0"},
		// Elsewhere with the mutual TLS of --listen.
		{"--metrics-address", "0.0.0.0:9899", "--listen", "0.0.0.0:0", "--tls-cert", "c", "--tls-key", "k", "--client-ca", "ca"},
	} {
		cfg, err := parseFlags(args)
		if err != nil || cfg.metricsAddress != args[1] {
			t.Errorf("parseFlags(%q) = %q, %v", args, cfg.metricsAddress, err)
		}
	}
	// Without TLS, a non-loopback address is refused at start, saying why.
	for _, addr := range []string{"0.0.0.0:9899", ":9899", "192.0.2.1:9899"} {
		_, err := parseFlags([]string{"--metrics-address", addr})
		if !errors.Is(err, metrics.ErrNotLoopback) || !strings.Contains(err.Error(), "--metrics-address") {
			t.Errorf("--metrics-address %s without TLS: %v, want ErrNotLoopback", addr, err)
		}
	}
	if cfg, err := parseFlags(nil); err != nil || cfg.metricsAddress != "" {
		t.Errorf("metrics on by default: %q, %v", cfg.metricsAddress, err)
	}
}
