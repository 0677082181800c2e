package signals

import (
	"syscall"
	"testing"
)

func TestParse(t *testing.T) {
	tests := []struct {
		in   string
		want syscall.Signal
		name string
	}{
		{"SIGQUIT", syscall.SIGQUIT, "SIGQUIT"},
		{"quit", syscall.SIGQUIT, "SIGQUIT"},
		{"SIGTERM", syscall.SIGTERM, "SIGTERM"},
		{"9", syscall.SIGKILL, "SIGKILL"},
		{"SIGCLD", syscall.SIGCHLD, "SIGCHLD"},
		{"SIGIOT", syscall.SIGABRT, "SIGABRT"},
		{"SIGPOLL", syscall.SIGIO, "SIGIO"},
		{"SIGRTMIN", 34, "SIGRTMIN"},
		{"SIGRTMIN+3", 37, "SIGRTMIN+3"},
		{"RTMAX-1", 63, "SIGRTMIN+29"},
		{"SIGRTMAX", 64, "SIGRTMIN+30"},
		{"40", 40, "SIGRTMIN+6"},
	}
	for _, tc := range tests {
		got, err := Parse(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("Parse(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
			continue
		}
		if n := Name(got); n != tc.name {
			t.Errorf("Name(%d) = %q, want %q", got, n, tc.name)
		}
		if back, err := Parse(Name(got)); err != nil || back != got {
			t.Errorf("Parse(Name(%d)) = %d, %v", got, back, err)
		}
	}
	for _, bad := range []string{"", "SIGFLY", "0", "65", "-1", "SIGRTMIN+31", "SIGRTMAX-31", "SIGRTMIN+x", "SIGRTMIN-1"} {
		if _, err := Parse(bad); err == nil {
			t.Errorf("Parse(%q) accepted", bad)
		}
	}
}
