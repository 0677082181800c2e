package pods

import (
	"os"
	"path/filepath"
	"testing"
)

func TestNetDev(t *testing.T) {
	file := filepath.Join(t.TempDir(), "dev")
	const dev = `Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:    1000      10    0    0    0     0          0         0     1000      10    0    0    0     0       0          0
  eth0: 5000000    4000    1    2    0     0          0         0   700000     300    3    4    0     0       0          0
`
	if err := os.WriteFile(file, []byte(dev), 0o600); err != nil {
		t.Fatal(err)
	}
	got := netDev(file)
	if len(got) != 1 {
		t.Fatalf("interfaces %v, want eth0 alone (no loopback)", got)
	}
	i := got[0]
	if i.GetName() != "eth0" || i.GetRxBytes() != 5000000 || i.GetRxPackets() != 4000 || i.GetRxErrors() != 1 || i.GetRxDropped() != 2 ||
		i.GetTxBytes() != 700000 || i.GetTxPackets() != 300 || i.GetTxErrors() != 3 || i.GetTxDropped() != 4 {
		t.Fatalf("eth0 read as %v", i)
	}
	if netDev(filepath.Join(t.TempDir(), "none")) != nil {
		t.Fatal("a missing file has interfaces")
	}
}

func TestKeyedAndSingle(t *testing.T) {
	dir := t.TempDir()
	stat := filepath.Join(dir, "memory.stat")
	if err := os.WriteFile(stat, []byte("cache 4096\nrss 8192\nbad x\n\ntotal_rss 12288\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	m := keyed(stat)
	if m["cache"] != 4096 || m["rss"] != 8192 || m["total_rss"] != 12288 || len(m) != 3 {
		t.Fatalf("keyed: %v", m)
	}
	one := filepath.Join(dir, "pids.max")
	for content, want := range map[string]uint64{"max\n": 0, "512\n": 512} {
		if err := os.WriteFile(one, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if got := single(one); got != want {
			t.Fatalf("single(%q) = %d, want %d", content, got, want)
		}
	}
}
