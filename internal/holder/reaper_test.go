package holder

import (
	"bytes"
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/aurae-runtime/aurae-cri/internal/linux"
)

// reapers lists the reaper of each architecture that has one.
var reapers = []struct {
	arch    string
	machine elf.Machine
	code    []byte
}{{"amd64", elf.EM_X86_64, reaperAMD64}, {"arm64", elf.EM_AARCH64, reaperARM64}}

// TestHolderReaperELF: each reaper is a well-formed static executable whose
// entry point is its code, with a stack that is not executable.
func TestHolderReaperELF(t *testing.T) {
	for _, r := range reapers {
		b := reaperELF(r.machine, r.code)
		f, err := elf.NewFile(bytes.NewReader(b))
		if err != nil {
			t.Fatalf("%s: %v", r.arch, err)
		}
		if f.Type != elf.ET_EXEC || f.Machine != r.machine || len(f.Progs) != 2 || f.Progs[0].Type != elf.PT_LOAD || f.Progs[1].Type != elf.PT_GNU_STACK {
			t.Fatalf("%s: type %v, machine %v, %d program headers", r.arch, f.Type, f.Machine, len(f.Progs))
		}
		if f.Progs[1].Flags&elf.PF_X != 0 {
			t.Errorf("%s: the stack is executable", r.arch)
		}
		if want := f.Progs[0].Vaddr + uint64(len(b)-len(r.code)); f.Entry != want || f.Entry%4 != 0 {
			t.Errorf("%s: entry %#x, want %#x", r.arch, f.Entry, want)
		}
	}
}

// TestHolderReaperRuns runs each reaper (natively, or under
// qemu-<arch>-static where installed): it says "1" on fd 3 and closes it,
// and ignores SIGINT, SIGTERM and SIGHUP; only SIGKILL ends it. (That it
// reaps is TestHolderHidesHost's.)
func TestHolderReaperRuns(t *testing.T) {
	for _, r := range reapers {
		t.Run(r.arch, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "reaper")
			if err := os.WriteFile(path, reaperELF(r.machine, r.code), 0o755); err != nil {
				t.Fatal(err)
			}
			argv := []string{path}
			if r.arch != runtime.GOARCH {
				qemu := map[string]string{"amd64": "qemu-x86_64-static", "arm64": "qemu-aarch64-static"}[r.arch]
				if _, err := exec.LookPath(qemu); err != nil {
					t.Skipf("%s is not installed (Debian's qemu-user-static)", qemu)
				}
				argv = append([]string{qemu}, argv...)
			}
			readyR, readyW, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			defer readyR.Close()
			cmd := exec.Command(argv[0], argv[1:]...)
			cmd.ExtraFiles = []*os.File{readyW}
			err = cmd.Start()
			readyW.Close()
			if err != nil {
				t.Fatal(err)
			}
			exited := make(chan error, 1)
			go func() { exited <- cmd.Wait() }()
			defer func() {
				_ = cmd.Process.Kill()
				t.Logf("reaper: %v", <-exited) // killed
			}()
			if err := linux.WaitReady(t.Context(), readyR, 10*time.Second); err != nil {
				t.Fatal(err)
			}
			for _, sig := range []os.Signal{os.Interrupt, unix.SIGTERM, unix.SIGHUP} {
				if err := cmd.Process.Signal(sig); err != nil {
					t.Fatal(err)
				}
			}
			select {
			case err := <-exited:
				exited <- err
				t.Fatalf("reaper exited after SIGINT, SIGTERM, SIGHUP: %v", err)
			case <-time.After(200 * time.Millisecond):
			}
		})
	}
}
