package pods

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestWatchOOMFileSeesAKillBeforeTheFileGoes: the watch marks the
// container as soon as its memory.events counts an OOM kill, even when the
// file (the cgroup) is gone by the time the exit is read.
func TestWatchOOMFileSeesAKillBeforeTheFileGoes(t *testing.T) {
	e := newEnv(t)
	file := filepath.Join(t.TempDir(), "memory.events")
	write := func(s string) {
		t.Helper()
		// In place, as the kernel changes it (IN_MODIFY).
		f, err := os.OpenFile(file, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteString(s); err != nil {
			t.Fatal(err)
		}
		_ = f.Close()
	}
	write("low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n")
	c := &container{id: "oomer", done: make(chan struct{})}
	e.svc.watchOOMFile(c, file)
	// A change that is no OOM kill (the container at its limit) does not
	// end the watch, as it did conmon 2.1's.
	write("low 0\nhigh 0\nmax 3\noom 0\noom_kill 0\noom_group_kill 0\n")
	time.Sleep(50 * time.Millisecond)
	if c.oomSeen.Load() {
		t.Fatal("a max event was taken for an OOM kill")
	}
	// The kernel counts the OOM before it kills; the change that counts
	// the kill may be dropped when the cgroup goes at once (as it does
	// under the systemd driver), so the OOM alone marks the container.
	write("low 0\nhigh 0\nmax 9\noom 1\noom_kill 0\noom_group_kill 0\n")
	deadline := time.Now().Add(5 * time.Second)
	for !c.oomSeen.Load() {
		if time.Now().After(deadline) {
			t.Fatal("the OOM kill was not seen")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := os.Remove(file); err != nil {
		t.Fatal(err)
	}
	// Marked, the exit reads OOMKilled whatever is left of the cgroup.
	other := &container{id: "quiet", done: make(chan struct{})}
	write("max 4\noom 0\noom_kill 0\n")
	e.svc.watchOOMFile(other, file)
	if err := os.Remove(file); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	if other.oomSeen.Load() {
		t.Fatal("a cgroup removed without an OOM kill was taken for one")
	}
}

func TestOOMKillsIn(t *testing.T) {
	dir := t.TempDir()
	for name, tc := range map[string]struct {
		content string
		want    bool
	}{
		"v2 killed": {"oom 2\noom_kill 1\n", true},
		// The kill's own change may never be reported (see watchOOM).
		"v2 oom only": {"oom 2\noom_kill 0\n", true},
		"v2 at max":   {"low 0\nhigh 0\nmax 7\noom 0\noom_kill 0\noom_group_kill 0\n", false},
		"v1 none":     {"oom_kill_disable 0\nunder_oom 1\noom_kill 0\n", false},
		"v1 killed":   {"oom_kill_disable 0\nunder_oom 0\noom_kill 3\n", true},
		"missing":     {"", false},
	} {
		p := filepath.Join(dir, name)
		if tc.content != "" {
			if err := os.WriteFile(p, []byte(tc.content), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		if got := oomKillsIn(p); got != tc.want {
			t.Errorf("%s: %v, want %v", name, got, tc.want)
		}
	}
}
