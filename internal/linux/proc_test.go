package linux

import (
	"os"
	"os/exec"
	"testing"
)

func TestStatAndPidfd(t *testing.T) {
	st, err := Stat(os.Getpid())
	if err != nil || st.StartTime == 0 || st.Exited() {
		t.Fatalf("own stat %+v %v", st, err)
	}
	if st.PPid != os.Getppid() {
		t.Errorf("own parent %d, want %d", st.PPid, os.Getppid())
	}
	if !Alive(os.Getpid(), st.StartTime) {
		t.Fatal("own process not alive")
	}
	if Alive(os.Getpid(), st.StartTime+1) {
		t.Fatal("a different start time names the same process")
	}
	cmd := exec.Command("true")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	start, err := StartTime(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	fd, ok := OpenPidfd(cmd.Process.Pid, start)
	if ok {
		WaitPidfd(fd) // returns once it has exited (a zombie until waited)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	if Alive(cmd.Process.Pid, start) {
		t.Fatal("exited process alive")
	}
	if _, err := Stat(-1); err == nil {
		t.Fatal("stat of pid -1")
	}
}
