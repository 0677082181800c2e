package cgroup

import (
	"errors"
	"testing"
)

func TestChooseDriver(t *testing.T) {
	v2systemd := Host{Unified: true, SystemdInit: true}
	v1systemd := Host{Unified: false, SystemdInit: true}
	v2plain := Host{Unified: true}
	v1plain := Host{}
	for _, c := range []struct {
		flag    string
		host    Host
		want    Driver
		wantErr error
	}{
		{"", v2systemd, Systemd, nil},
		{"", v1systemd, Cgroupfs, nil},
		{"", v2plain, Cgroupfs, nil},
		{"", v1plain, Cgroupfs, nil},
		{"cgroupfs", v2systemd, Cgroupfs, nil},
		{"cgroupfs", v1plain, Cgroupfs, nil},
		{"systemd", v2systemd, Systemd, nil},
		{"systemd", v1plain, "", ErrDriver},
		{"systemd", v2plain, "", ErrDriver},
		{"systemd", v1systemd, "", ErrDriver},
	} {
		got, err := ChooseDriver(c.flag, c.host)
		if got != c.want || !errors.Is(err, c.wantErr) {
			t.Errorf("ChooseDriver(%q, %+v) = %q, %v; want %q, %v", c.flag, c.host, got, err, c.want, c.wantErr)
		}
	}
	if _, err := ChooseDriver("Systemd", v2systemd); err == nil {
		t.Error("an unknown driver name was accepted")
	}
}

// On this host the default follows what it is; systemd is refused where it
// is not PID 1 with cgroup v2.
func TestChooseDriverThisHost(t *testing.T) {
	h := ThisHost()
	d, err := ChooseDriver("", h)
	if err != nil {
		t.Fatal(err)
	}
	if want := (h.Unified && h.SystemdInit); (d == Systemd) != want {
		t.Errorf("default driver %q on %+v", d, h)
	}
	_, err = ChooseDriver("systemd", h)
	if h.Unified && h.SystemdInit {
		if err != nil {
			t.Errorf("systemd refused on a v2 host with systemd: %v", err)
		}
	} else if !errors.Is(err, ErrDriver) {
		t.Errorf("systemd on %+v: %v, want ErrDriver", h, err)
	}
}
