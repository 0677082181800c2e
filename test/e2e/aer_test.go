package e2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/aurae-runtime/aurae-cri/test/testimage"
)

// aer runs the aer binary with args and returns its stdout, stderr and
// exit status.
func aer(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(binaries["aer"], args...)
	// No client config of the machine's: HOME without one.
	cmd.Env = append(os.Environ(), "HOME="+t.TempDir())
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return stdout.String(), stderr.String(), 0
	case errors.As(err, &exit):
		return stdout.String(), stderr.String(), exit.ExitCode()
	default:
		t.Fatalf("run aer: %v", err)
		return "", "", -1
	}
}

// mustAer runs aer and fails the test unless it exits 0.
func mustAer(t *testing.T, args ...string) string {
	t.Helper()
	out, errOut, code := aer(t, args...)
	if code != 0 {
		t.Fatalf("aer %q: exit %d, stderr %q", args, code, errOut)
	}
	return out
}

// row finds the table line whose fields start with want.
func row(out string, want ...string) []string {
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) >= len(want) && slices.Equal(f[:len(want)], want) {
			return f
		}
	}
	return nil
}

func TestAerCellsAndDiscovery(t *testing.T) {
	a := startAuraed(t)
	addr := "--address=unix://" + a.Socket

	out := mustAer(t, addr, "discovery")
	if row(out, "HEALTHY", "VERSION") == nil || row(out, "yes", e2eVersion) == nil {
		t.Fatalf("aer discovery:\n%s", out)
	}

	mustAer(t, addr, "cells", "allocate", "web", "--memory-max", "268435456")
	out = mustAer(t, "cells", "start", "web", "sleeper", "sleep 1000", addr)
	r := row(out, "web/sleeper")
	if r == nil {
		t.Fatalf("aer cells start:\n%s", out)
	}
	pid := r[1]
	if out := mustAer(t, addr, "cells", "list"); row(out, "web", "sleeper", pid, "running") == nil {
		t.Fatalf("aer cells list lacks the running executable (pid %s):\n%s", pid, out)
	}

	// -o json is the message itself.
	var containers struct {
		Messages []struct {
			Containers []struct {
				Namespace, ID, Name, Status string
				Pid                         uint32
			} `json:"containers"`
		} `json:"messages"`
	}
	out = mustAer(t, addr, "-o", "json", "os", "containers", "--namespace", "cells")
	if err := json.Unmarshal([]byte(out), &containers); err != nil {
		t.Fatalf("aer -o json os containers: %v\n%s", err, out)
	}
	if len(containers.Messages) != 1 || len(containers.Messages[0].Containers) != 1 ||
		containers.Messages[0].Containers[0].ID != "web/sleeper" || strconv.Itoa(int(containers.Messages[0].Containers[0].Pid)) != pid {
		t.Fatalf("aer -o json os containers:\n%s", out)
	}

	// os stats: the executable under the same id, name and pod (its
	// cell), with its cell's memory working set and CPU time.
	host, _ := os.Hostname()
	out = mustAer(t, addr, "os", "stats", "--namespace", "cells")
	if r := row(out, host, "cells", "web/sleeper", "sleeper", "web"); r == nil || len(r) != 7 || r[5] == "0" || row(out, "NODE", "NAMESPACE", "ID", "NAME", "POD") == nil {
		t.Fatalf("aer os stats lacks web/sleeper with memory:\n%s", out)
	}

	if out := mustAer(t, addr, "cells", "stop", "web", "sleeper", "--grace", "1s"); row(out, "web/sleeper", pid) == nil {
		t.Fatalf("aer cells stop:\n%s", out)
	}
	mustAer(t, addr, "cells", "free", "web")

	// A failed call: exit 1 and the server's reason.
	if _, errOut, code := aer(t, addr, "cells", "free", "web"); code != 1 || !strings.Contains(errOut, "not found") {
		t.Fatalf("aer cells free of a freed cell: exit %d, stderr %q; want 1 and not found", code, errOut)
	}
	// Bad usage: exit 2, nothing called.
	if _, errOut, code := aer(t, addr, "cells", "start", "web"); code != 2 || !strings.Contains(errOut, "want arguments") {
		t.Fatalf("aer cells start with one argument: exit %d, stderr %q; want 2", code, errOut)
	}
}

func TestAerOS(t *testing.T) {
	a := startAuraed(t)
	addr := "--address=unix://" + a.Socket

	var mem struct {
		Messages []struct {
			Meminfo struct {
				Memtotal string `json:"memtotal"` // protojson writes uint64 as a string
			} `json:"meminfo"`
		} `json:"messages"`
	}
	out := mustAer(t, addr, "os", "memory", "-o", "json")
	if err := json.Unmarshal([]byte(out), &mem); err != nil || len(mem.Messages) != 1 {
		t.Fatalf("aer os memory -o json: %v\n%s", err, out)
	}
	if want := readMeminfo(t)["MemTotal"]; mem.Messages[0].Meminfo.Memtotal != strconv.FormatUint(want, 10) {
		t.Fatalf("memtotal %s, /proc/meminfo has %d", mem.Messages[0].Meminfo.Memtotal, want)
	}
	if out := mustAer(t, addr, "os", "memory"); row(out, "NODE", "TOTAL") == nil || len(strings.Split(strings.TrimSpace(out), "\n")) != 2 {
		t.Fatalf("aer os memory:\n%s", out)
	}

	out = mustAer(t, addr, "os", "processes")
	host, _ := os.Hostname()
	r := row(out, host, strconv.Itoa(a.Pid()))
	if r == nil || !strings.Contains(strings.Join(r, " "), "--socket "+a.Socket) {
		t.Fatalf("aer os processes lacks auraed (pid %d) with its args:\n%s", a.Pid(), out)
	}

	marker := "aurae-e2e-aer-" + randomHex(t, 6)
	writeKmsg(t, marker)
	if out := mustAer(t, addr, "os", "dmesg"); !regexp.MustCompile(`user\.\w+ \[ *\d+\.\d{6}\] ` + marker).MatchString(out) {
		t.Fatalf("aer os dmesg lacks %s", marker)
	}

	if _, errOut, code := aer(t, addr, "os", "restart", "no-such-container"); code != 1 || !strings.Contains(errOut, "not found") {
		t.Fatalf("aer os restart of an unknown container: exit %d, stderr %q", code, errOut)
	}
}

// TestAerNodes reaches a over TCP with the client config's certificates
// and fans out to a, b and the stopped c: rows of a and b, c's error on
// stderr, exit 1.
func TestAerNodes(t *testing.T) {
	n := startNodes(t)
	cfg := filepath.Join(t.TempDir(), "config")
	body := fmt.Sprintf("[auth]\nca_crt = %q\nclient_crt = %q\nclient_key = %q\n\n[system]\nsocket = %q\n",
		n.ca.CertFile, n.client.CertFile, n.client.KeyFile, n.a.TCPAddr())
	if err := os.WriteFile(cfg, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	out, errOut, code := aer(t, "--config", cfg, "os", "processes", "--nodes", "a,b,c")
	if code != 1 || !strings.Contains(errOut, "node c: ") {
		t.Fatalf("aer os processes --nodes a,b,c: exit %d, stderr %q; want 1 and node c's error", code, errOut)
	}
	for _, node := range []struct {
		name string
		pid  int
	}{{"a", n.a.Pid()}, {"b", n.b.Pid()}} {
		if row(out, node.name, strconv.Itoa(node.pid)) == nil {
			t.Errorf("no row of node %s's auraed (pid %d):\n%s", node.name, node.pid, out)
		}
	}
	if row(out, "c") != nil {
		t.Errorf("rows for the stopped node c:\n%s", out)
	}
	// The nodes that answer: exit 0.
	if out := mustAer(t, "--config", cfg, "os", "memory", "--nodes", "a,b"); row(out, "a") == nil || row(out, "b") == nil {
		t.Fatalf("aer os memory --nodes a,b:\n%s", out)
	}
}

func TestAerSchedule(t *testing.T) {
	a := startAuraed(t)
	addr := "--address=unix://" + a.Socket
	mustAer(t, addr, "schedule", "enable", "ticker", "sleep 1000", "--comment", "e2e")
	if out := mustAer(t, addr, "schedule", "list"); row(out, "ticker", "enabled", "sleep", "1000") == nil {
		t.Fatalf("aer schedule list:\n%s", out)
	}
	// It runs, in its cell.
	deadline := time.Now().Add(30 * time.Second)
	for row(mustAer(t, addr, "cells", "list"), "schedule-ticker", "main") == nil {
		if time.Now().After(deadline) {
			t.Fatal("the scheduled executable does not run")
		}
		time.Sleep(50 * time.Millisecond)
	}
	mustAer(t, addr, "schedule", "disable", "ticker")
	if out := mustAer(t, addr, "schedule", "list"); row(out, "ticker", "disabled") == nil {
		t.Fatalf("aer schedule list after disable:\n%s", out)
	}
	mustAer(t, addr, "schedule", "destroy", "ticker")
	if _, errOut, code := aer(t, addr, "schedule", "destroy", "ticker"); code != 1 || !strings.Contains(errOut, "not found") {
		t.Fatalf("aer schedule destroy of a forgotten executable: exit %d, stderr %q", code, errOut)
	}
}

// TestAerRuntime drives runtime.Core through aer: an executable's output
// and exit status, a cell of an image from a registry (listed, then
// freed), a malformed pod argument.
func TestAerRuntime(t *testing.T) {
	a, reg := startImageAuraed(t)
	addr := "--address=unix://" + a.Socket
	out, errOut, code := aer(t, addr, "runtime", "run", "greet", "echo hi aer")
	if code != 0 || out != "hi aer\n" || errOut != "" {
		t.Fatalf("aer runtime run echo: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	out, errOut, code = aer(t, addr, "runtime", "run", "fail", "sh -c 'echo bad >&2; exit 3'")
	if code != 3 || out != "" || errOut != "bad\n" {
		t.Fatalf("aer runtime run of a failing command: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	ref := reg.Push(t, "e2e/aer:1", testimage.MustBusybox(t, testimage.Options{Cmd: []string{"sleep", "600"}}))
	out = mustAer(t, addr, "--timeout=2m", "runtime", "cell", "web", "app="+ref)
	if r := row(out, "web", "app"); len(r) < 4 || r[3] != "active" {
		t.Fatalf("aer runtime cell:\n%s", out)
	}
	if out := mustAer(t, addr, "pods", "list"); !strings.Contains(out, "web.app") {
		t.Fatalf("aer pods list after runtime cell:\n%s", out)
	}
	mustAer(t, addr, "pods", "free", "web")
	if _, err := os.Stat(filepath.Join(a.StateDir, "runcell", "web")); !os.IsNotExist(err) {
		t.Fatalf("the cell's dir after aer pods free: %v", err)
	}
	if _, errOut, code := aer(t, addr, "runtime", "pod", "p", "no-cell"); code != 2 || !strings.Contains(errOut, "want CELL/[NAME=]IMAGE") {
		t.Fatalf("aer runtime pod with a bad argument: exit %d, stderr %q", code, errOut)
	}
}
