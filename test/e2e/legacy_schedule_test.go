package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	cellsv0 "github.com/aurae-runtime/aurae-cri/api/cells/v0"
	metaapi "github.com/aurae-runtime/aurae-cri/api/meta"
	runtimeapi "github.com/aurae-runtime/aurae-cri/api/runtime"
	scheduleapi "github.com/aurae-runtime/aurae-cri/api/schedule"
)

// scheduledPid is the pid of the running process of a scheduled
// executable; 0 when none runs.
func scheduledPid(t *testing.T, a *Auraed, name string) int {
	t.Helper()
	resp, err := a.Client().Cells.List(testContext(t), &cellsv0.CellServiceListRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range resp.GetCells() {
		if n.GetCell().GetName() == "schedule-"+name {
			for _, e := range n.GetExecutables() {
				if e.GetState() == cellsv0.ExecutableState_EXECUTABLE_STATE_RUNNING {
					return int(e.GetPid())
				}
			}
		}
	}
	return 0
}

// waitStarts waits until the file a scheduled command appends to at each
// start holds n lines.
func waitStarts(t *testing.T, path string, n int) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		b, _ := os.ReadFile(path)
		got := strings.Count(string(b), "started\n")
		if got == n {
			return
		}
		if got > n || time.Now().After(deadline) {
			t.Fatalf("%s records %d starts, want %d", filepath.Base(path), got, n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestLegacySchedule(t *testing.T) {
	a := startAuraed(t)
	ctx := testContext(t)
	dir := t.TempDir()
	// New clients at each use: auraed restarts in between.
	execs := func() scheduleapi.ScheduleExecutableClient {
		return scheduleapi.NewScheduleExecutableClient(a.Client().Conn)
	}
	show := func() (enabled, disabled []string) {
		t.Helper()
		c := scheduleapi.NewScheduleClient(a.Client().Conn)
		en, err := c.ShowEnabled(ctx, &scheduleapi.ShowEnabledRequest{})
		if err != nil {
			t.Fatal(err)
		}
		dis, err := c.ShowDisabled(ctx, &scheduleapi.ShowDisabledRequest{})
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range en.GetExecutables() {
			enabled = append(enabled, e.GetMeta().GetName())
		}
		for _, e := range dis.GetExecutables() {
			disabled = append(disabled, e.GetMeta().GetName())
		}
		return enabled, disabled
	}
	exe := func(name string) *runtimeapi.Executable {
		return &runtimeapi.Executable{Meta: &metaapi.AuraeMeta{Name: name},
			Command: fmt.Sprintf(`sh -c 'echo started >> %s/%s; exec sleep 1000'`, dir, name)}
	}
	keeper, quiet := filepath.Join(dir, "keeper"), filepath.Join(dir, "quiet")
	for _, name := range []string{"keeper", "quiet"} {
		if _, err := execs().Enable(ctx, exe(name)); err != nil {
			t.Fatalf("Enable %s: %v", name, err)
		}
	}
	waitStarts(t, keeper, 1)
	waitStarts(t, quiet, 1)

	// It exits: started again (after the backoff).
	if err := syscall.Kill(scheduledPid(t, a, "keeper"), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitStarts(t, keeper, 2)

	quietPid := scheduledPid(t, a, "quiet")
	if _, err := execs().Disable(ctx, exe("quiet")); err != nil {
		t.Fatalf("Disable: %v", err)
	}
	if scheduledPid(t, a, "quiet") != 0 || syscall.Kill(quietPid, 0) == nil {
		t.Fatal("the disabled executable still runs")
	}
	if en, dis := show(); strings.Join(en, ",") != "keeper" || strings.Join(dis, ",") != "quiet" {
		t.Fatalf("enabled %v, disabled %v", en, dis)
	}

	// An auraed restart adopts the running process: no second start.
	pid := scheduledPid(t, a, "keeper")
	a.Restart(t)
	waitLogRecord(t, a, "scheduled executable adopted", 1)
	if got := scheduledPid(t, a, "keeper"); got != pid {
		t.Fatalf("after a restart the scheduled process is %d, want the adopted %d", got, pid)
	}

	// It ends while auraed is away (as at a reboot): the next auraed
	// starts it again; the disabled one stays stopped.
	if err := a.Stop(t); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	a.Restart(t)
	waitStarts(t, keeper, 3)
	if scheduledPid(t, a, "quiet") != 0 {
		t.Fatal("the disabled executable runs after a restart")
	}
	waitStarts(t, quiet, 1)
	if en, dis := show(); strings.Join(en, ",") != "keeper" || strings.Join(dis, ",") != "quiet" {
		t.Fatalf("after the restarts: enabled %v, disabled %v", en, dis)
	}

	for _, name := range []string{"keeper", "quiet"} {
		if _, err := execs().Destroy(ctx, exe(name)); err != nil {
			t.Fatalf("Destroy %s: %v", name, err)
		}
	}
	if en, dis := show(); len(en)+len(dis) != 0 || scheduledPid(t, a, "keeper") != 0 {
		t.Fatalf("after Destroy: enabled %v, disabled %v", en, dis)
	}
	if _, err := execs().Destroy(ctx, exe("keeper")); status.Code(err) != codes.NotFound {
		t.Fatalf("Destroy of a forgotten executable = %v, want NotFound", err)
	}
	if _, err := execs().Enable(ctx, &runtimeapi.Executable{Meta: &metaapi.AuraeMeta{Name: "../x"}, Command: "true"}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("Enable with a bad name = %v, want InvalidArgument", err)
	}
}

// waitLogRecord waits until auraed logged n records with msg.
func waitLogRecord(t *testing.T, a *Auraed, msg string, n int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		got := 0
		for _, r := range a.Records() {
			if r["msg"] == msg {
				got++
			}
		}
		if got >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("auraed logged %d records %q, want %d", got, msg, n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
