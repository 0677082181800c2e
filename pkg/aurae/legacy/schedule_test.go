package legacy

import (
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/errdefs"

	metaapi "github.com/aurae-runtime/aurae-cri/api/meta"
	runtimeapi "github.com/aurae-runtime/aurae-cri/api/runtime"
)

func TestCheckScheduled(t *testing.T) {
	for _, tc := range []struct {
		name, command string
		ok            bool
	}{
		{"web", "sleep 1", true},
		{"web-1.b_c", "x", true},
		{"", "x", false},
		{"../x", "x", false},
		{".hidden", "x", false},
		{"web", " ", false},
	} {
		_, err := checkScheduled(&runtimeapi.Executable{Meta: &metaapi.AuraeMeta{Name: tc.name}, Command: tc.command}, true)
		if (err == nil) != tc.ok || (err != nil && !errdefs.IsInvalidArgument(err)) {
			t.Errorf("checkScheduled(%q, %q) = %v, want ok %v", tc.name, tc.command, err, tc.ok)
		}
	}
}

// TestSchedulerState: disabled executables survive a new Scheduler and are
// not run (a nil Runner would panic if they were); an unreadable state
// file stops it.
func TestSchedulerState(t *testing.T) {
	dir := t.TempDir()
	s := &Scheduler{path: filepath.Join(dir, scheduleFile), recs: map[string]scheduled{"idle": {Command: "sleep 1"}}}
	if err := s.saveLocked(); err != nil {
		t.Fatal(err)
	}
	again, err := NewScheduler(nil, dir, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if got := again.show(false); len(got) != 1 || got[0].GetMeta().GetName() != "idle" || got[0].GetCommand() != "sleep 1" || len(again.show(true)) != 0 {
		t.Fatalf("reloaded: disabled %v, enabled %v", got, again.show(true))
	}
	if err := os.WriteFile(filepath.Join(dir, scheduleFile), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := NewScheduler(nil, dir, slog.New(slog.DiscardHandler)); err == nil {
		t.Fatal("a torn state file was accepted")
	}
}
