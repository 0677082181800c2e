package main

import (
	"errors"
	"testing"

	"github.com/aurae-runtime/aurae-cri/pkg/aurae/cgroup"
)

func TestCgroupDriverFlag(t *testing.T) {
	h := cgroup.ThisHost()
	cfg, err := parseFlags(nil)
	if err != nil {
		t.Fatal(err)
	}
	if want := h.Unified && h.SystemdInit; (cfg.cgroupDriver == cgroup.Systemd) != want {
		t.Errorf("default driver %q on %+v", cfg.cgroupDriver, h)
	}
	_, err = parseFlags([]string{"--cgroup-driver", "systemd"})
	if h.Unified && h.SystemdInit {
		if err != nil {
			t.Errorf("--cgroup-driver systemd refused on a systemd cgroup v2 host: %v", err)
		}
	} else if !errors.Is(err, cgroup.ErrDriver) {
		t.Errorf("--cgroup-driver systemd on %+v: %v, want a refusal", h, err)
	}
}
