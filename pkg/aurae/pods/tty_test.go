package pods

import (
	"strings"
	"testing"
	"time"

	podsv0 "github.com/aurae-runtime/aurae-cri/api/pods/v0"
)

func TestTTY(t *testing.T) {
	e := newEnv(t)
	e.allocate(&podsv0.Pod{Id: "tty"})
	c := e.container("term", spec(t, nil, "sh", "-c", "[ -t 1 ] && echo is a tty; exit 0"))
	c.Tty = true
	e.start("tty", c)
	st := e.waitExited("term", 10*time.Second)
	if st.GetExitCode() != 0 {
		t.Fatalf("status %v", st)
	}
	lines := readLines(t, c.GetLogPath())
	found := false
	for _, l := range lines {
		m := criLine.FindStringSubmatch(l)
		if m == nil {
			t.Fatalf("log line %q is not in CRI format", l)
		}
		if strings.TrimRight(m[4], "\r") == "is a tty" && m[2] == "stdout" {
			found = true
		}
	}
	if !found {
		t.Errorf("log %q: want \"is a tty\" on stdout", lines)
	}
}
