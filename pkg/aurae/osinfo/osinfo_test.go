package osinfo

import (
	"context"
	"os"
	"strings"
	"testing"

	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/emptypb"

	commonapi "github.com/aurae-runtime/aurae-cri/api/common"
	osapi "github.com/aurae-runtime/aurae-cri/api/os"
)

// meminfo is a kernel 6.1 /proc/meminfo.
const meminfo = `MemTotal:        8131320 kB
MemFree:          812628 kB
MemAvailable:    5922796 kB
Buffers:          262432 kB
Cached:          4718040 kB
SwapCached:            4 kB
Active:          2367652 kB
Inactive:        4196116 kB
Active(anon):      11112 kB
Inactive(anon):  1606296 kB
Active(file):    2356540 kB
Inactive(file):  2589820 kB
Unevictable:       29188 kB
Mlocked:           27652 kB
SwapTotal:        999420 kB
SwapFree:         996604 kB
Zswap:                 0 kB
Zswapped:              0 kB
Dirty:              1296 kB
Writeback:             8 kB
AnonPages:       1612020 kB
Mapped:           555932 kB
Shmem:             30568 kB
KReclaimable:     313644 kB
Slab:             467420 kB
SReclaimable:     313644 kB
SUnreclaim:       153776 kB
KernelStack:       12576 kB
PageTables:        23540 kB
SecPageTables:         0 kB
NFS_Unstable:         12 kB
Bounce:               16 kB
WritebackTmp:         20 kB
CommitLimit:     5065080 kB
Committed_AS:    5765644 kB
VmallocTotal:   34359738367 kB
VmallocUsed:       47268 kB
VmallocChunk:        124 kB
Percpu:             4544 kB
HardwareCorrupted:     4 kB
AnonHugePages:   1075200 kB
ShmemHugePages:      2048 kB
ShmemPmdMapped:      4096 kB
FileHugePages:         0 kB
FilePmdMapped:         0 kB
CmaTotal:            128 kB
CmaFree:              64 kB
HugePages_Total:       3
HugePages_Free:        2
HugePages_Rsvd:        1
HugePages_Surp:        5
Hugepagesize:       2048 kB
Hugetlb:               0 kB
DirectMap4k:      390968 kB
DirectMap2M:     7999488 kB
`

func TestParseMeminfo(t *testing.T) {
	mi, err := parseMeminfo([]byte(meminfo))
	if err != nil {
		t.Fatal(err)
	}
	const k = 1024
	want := &osapi.MemInfo{
		Memtotal: 8131320 * k, Memfree: 812628 * k, Memavailable: 5922796 * k, Buffers: 262432 * k, Cached: 4718040 * k,
		Swapcached: 4 * k, Active: 2367652 * k, Inactive: 4196116 * k, Activeanon: 11112 * k, Inactiveanon: 1606296 * k,
		Activefile: 2356540 * k, Inactivefile: 2589820 * k, Unevictable: 29188 * k, Mlocked: 27652 * k, Swaptotal: 999420 * k,
		Swapfree: 996604 * k, Dirty: 1296 * k, Writeback: 8 * k, Anonpages: 1612020 * k, Mapped: 555932 * k, Shmem: 30568 * k,
		Slab: 467420 * k, Sreclaimable: 313644 * k, Sunreclaim: 153776 * k, Kernelstack: 12576 * k, Pagetables: 23540 * k,
		Nfsunstable: 12 * k, Bounce: 16 * k, Writebacktmp: 20 * k, Commitlimit: 5065080 * k, Committedas: 5765644 * k,
		Vmalloctotal: 34359738367 * k, Vmallocused: 47268 * k, Vmallocchunk: 124 * k, Hardwarecorrupted: 4 * k,
		Anonhugepages: 1075200 * k, Shmemhugepages: 2048 * k, Shmempmdmapped: 4096 * k, Cmatotal: 128 * k, Cmafree: 64 * k,
		Hugepagestotal: 3, Hugepagesfree: 2, Hugepagesrsvd: 1, Hugepagessurp: 5, Hugepagesize: 2048 * k,
	}
	if mi.String() != want.String() {
		t.Fatalf("parseMeminfo =\n%v\nwant\n%v", mi, want)
	}
	if _, err := parseMeminfo([]byte("MemTotal: lots kB\n")); err == nil {
		t.Error("a value that is no number was accepted")
	}
}

func TestParseStat(t *testing.T) {
	// comm with a space and a parenthesis; utime 250, stime 50 ticks,
	// 4 threads, 1 MiB virtual, 10 pages resident.
	stat := "4242 (we(ird) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 4 0 1000 1048576 10 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0\n"
	p, err := parseStat([]byte(stat), 4096)
	if err != nil {
		t.Fatal(err)
	}
	want := &osapi.ProcessInfo{Pid: 4242, Ppid: 1, State: "S", Threads: 4, CpuTime: 3, VirtualMemory: 1 << 20, ResidentMemory: 40960, Command: "we(ird) name"}
	if p.String() != want.String() {
		t.Fatalf("parseStat = %v, want %v", p, want)
	}
	for _, bad := range []string{"", "12 no parens S 1", "12 (x) S 1 2 3"} {
		if _, err := parseStat([]byte(bad), 4096); err == nil {
			t.Errorf("parseStat(%q) succeeded", bad)
		}
	}
}

func TestFormatRecord(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"6,339,5140900,-;NET: Registered protocol family 10\n SUBSYSTEM=net\n", "kern.info [    5.140900] NET: Registered protocol family 10\n"},
		{"12,340,123456789012,c;hello from a user\n", "user.warning [123456.789012] hello from a user\n"},
		{"163,1,1,-;local4\n", "local4.err [    0.000001] local4\n"},
	} {
		got, ok := formatRecord([]byte(tc.in))
		if !ok || string(got) != tc.want {
			t.Errorf("formatRecord(%q) = %q, %v; want %q", tc.in, got, ok, tc.want)
		}
	}
	for _, bad := range []string{"no separator", "x,1,2;text", "6,1;short"} {
		if _, ok := formatRecord([]byte(bad)); ok {
			t.Errorf("formatRecord(%q) succeeded", bad)
		}
	}
}

func TestProcessesHoldsThisProcess(t *testing.T) {
	s := New(Config{NodeName: "here"})
	resp, err := s.Processes(t.Context(), &emptypb.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.GetMessages()) != 1 || resp.GetMessages()[0].GetMetadata().GetHostname() != "here" {
		t.Fatalf("messages = %v, want one from here", resp.GetMessages())
	}
	exe, _ := os.Executable()
	for _, p := range resp.GetMessages()[0].GetProcesses() {
		if int(p.GetPid()) == os.Getpid() {
			if p.GetArgs() != strings.Join(os.Args, " ") || p.GetExecutable() != exe || p.GetPpid() != int32(os.Getppid()) || p.GetResidentMemory() == 0 || p.GetThreads() < 1 {
				t.Fatalf("this process = %v; want args %q, exe %s, ppid %d", p, os.Args, exe, os.Getppid())
			}
			return
		}
	}
	t.Fatalf("pid %d is not listed", os.Getpid())
}

// TestFanOutMerges calls Memory for this node, a peer that is not
// configured and this node again (asked once): this node's answer carries
// its name, the unknown one an error, and the call itself succeeds.
func TestFanOutMerges(t *testing.T) {
	s := New(Config{NodeName: "here"})
	ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs(NodesKey, "here, nowhere", NodesKey, "here"))
	resp, err := s.Memory(ctx, &emptypb.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	msgs := resp.GetMessages()
	if len(msgs) != 2 {
		t.Fatalf("%d messages, want 2: %v", len(msgs), msgs)
	}
	if m := msgs[0]; m.GetMetadata().GetHostname() != "here" || m.GetMetadata().GetError() != "" || m.GetMeminfo().GetMemtotal() == 0 {
		t.Errorf("first message = %v, want here's memory", m)
	}
	if m := msgs[1]; m.GetMetadata().GetHostname() != "nowhere" || !strings.Contains(m.GetMetadata().GetError(), `unknown node "nowhere"`) || m.GetMeminfo() != nil {
		t.Errorf("second message = %v, want an error for nowhere", m)
	}
}

func TestDriverCRIWithoutEndpoint(t *testing.T) {
	s := New(Config{NodeName: "here"})
	_, err := s.Stats(t.Context(), &osapi.StatsRequest{Driver: commonapi.ContainerDriver_CRI})
	if err == nil || !strings.Contains(err.Error(), "--cri-endpoint") {
		t.Fatalf("Stats with driver CRI and no endpoint = %v, want an error naming --cri-endpoint", err)
	}
	_, err = s.Restart(t.Context(), &osapi.RestartRequest{Id: "x", Driver: commonapi.ContainerDriver_CRI})
	if err == nil || !strings.Contains(err.Error(), "kubelet") {
		t.Fatalf("Restart with driver CRI = %v, want a refusal", err)
	}
	_, err = s.Restart(t.Context(), &osapi.RestartRequest{Id: "web/sleeper"})
	if err == nil || !strings.Contains(err.Error(), "only pod containers") {
		t.Fatalf("Restart of a cell executable = %v, want a refusal", err)
	}
}

func TestDmesgReadsRecords(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("reading /dev/kmsg needs root where dmesg_restrict is set")
	}
	var n int
	err := readKmsg(t.Context(), &osapi.DmesgRequest{}, func(d *commonapi.Data) error {
		if n == 0 && !strings.Contains(string(d.GetBytes()), "] ") {
			t.Errorf("record %q has no timestamp", d.GetBytes())
		}
		n++
		return nil
	})
	if err != nil || n == 0 {
		t.Fatalf("readKmsg: %d records, %v", n, err)
	}
}
