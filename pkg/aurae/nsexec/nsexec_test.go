//go:build cgo

package nsexec

import (
	"errors"
	"os"
	"testing"
)

func BenchmarkStartTrue(b *testing.B) {
	for i := 0; i < b.N; i++ {
		p, err := Start(Spec{Path: "/bin/true", Args: []string{"true"}})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := p.Wait(); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkOSExecTrue(b *testing.B) {
	for i := 0; i < b.N; i++ {
		p, err := os.StartProcess("/bin/true", []string{"true"}, &os.ProcAttr{})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := p.Wait(); err != nil {
			b.Fatal(err)
		}
	}
}

func TestStartPlacesBeforeExec(t *testing.T) {
	for _, viaShim := range []bool{false, true} {
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		spec := Spec{Path: "/bin/echo", Args: []string{"echo", "hi"}, Stdout: w}
		if viaShim {
			// Joining our own namespace forces the shim path.
			spec.Join = []string{"/proc/self/ns/uts"}
		}
		placed := 0
		spec.Place = func(pid int) error { placed = pid; return nil }
		p, err := Start(spec)
		w.Close()
		if err != nil {
			t.Fatalf("shim=%v: %v", viaShim, err)
		}
		buf := make([]byte, 16)
		n, _ := r.Read(buf)
		r.Close()
		st, err := p.Wait()
		if err != nil || !st.Success() {
			t.Fatalf("shim=%v: %v %v", viaShim, st, err)
		}
		if placed != p.Pid {
			t.Fatalf("shim=%v: Place got pid %d, process is %d", viaShim, placed, p.Pid)
		}
		if string(buf[:n]) != "hi\n" {
			t.Fatalf("shim=%v: output %q", viaShim, buf[:n])
		}
	}
}

func TestStartReportsFailures(t *testing.T) {
	// The shim cannot join a namespace that does not exist: the error
	// comes back and no process is left.
	_, err := Start(Spec{Path: "/bin/true", Args: []string{"true"}, Join: []string{"/proc/self/ns/nope"}})
	var se *StartError
	if !errors.As(err, &se) {
		t.Fatalf("got %v, want a StartError", err)
	}
	// A Place error kills the process before it runs.
	_, err = Start(Spec{Path: "/bin/true", Args: []string{"true"}, Place: func(int) error { return errors.New("no cgroup") }})
	if err == nil || err.Error() != "no cgroup" {
		t.Fatalf("got %v", err)
	}
}
