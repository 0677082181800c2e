package main

import (
	"errors"
	"testing"

	"github.com/aurae-runtime/aurae-cri/pkg/aurae/cgroup"
)

// The driver follows the host by default; systemd is refused at start where
// systemd is not PID 1 on a cgroup v2 host (the CI machines: v1, no systemd).
func TestConfigCgroupDriver(t *testing.T) {
	h := cgroup.ThisHost()
	cfg, err := parseConfig(nil)
	if err != nil {
		t.Fatal(err)
	}
	want := cgroup.Cgroupfs
	if h.Unified && h.SystemdInit {
		want = cgroup.Systemd
	}
	if cfg.driver != want {
		t.Errorf("default driver %q on %+v, want %q", cfg.driver, h, want)
	}
	if cfg, err := parseConfig([]string{"--cgroup-driver", "cgroupfs"}); err != nil || cfg.driver != cgroup.Cgroupfs {
		t.Errorf("--cgroup-driver cgroupfs: %q, %v", cfg.driver, err)
	}
	_, err = parseConfig([]string{"--cgroup-driver", "systemd"})
	if h.Unified && h.SystemdInit {
		if err != nil {
			t.Errorf("--cgroup-driver systemd refused on a systemd cgroup v2 host: %v", err)
		}
	} else if !errors.Is(err, cgroup.ErrDriver) {
		t.Errorf("--cgroup-driver systemd on %+v: %v, want a refusal", h, err)
	}
	if _, err := parseConfig([]string{"--cgroup-driver", "sysd"}); err == nil {
		t.Error("an unknown driver was accepted")
	}
}
