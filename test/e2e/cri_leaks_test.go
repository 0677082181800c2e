package e2e

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/namespaces"

	podsv0 "github.com/aurae-runtime/aurae-cri/api/pods/v0"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/cgroup"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/client"
	"github.com/aurae-runtime/aurae-cri/pkg/image"
)

// objectID is a pod or container id as aurae-cri makes them.
var objectID = regexp.MustCompile(`[0-9a-f]{64}`)

// footprint is what one aurae-cri under test (and its auraed) left on the
// machine, by the pod or container id each thing names ("" for things that
// name none).
type footprint struct {
	things map[string][]string
	// veths on the test's bridge: one per pod whose network is up.
	veths []string
}

func (f *footprint) add(id, what string) {
	if f.things == nil {
		f.things = map[string][]string{}
	}
	if !slices.Contains(f.things[id], what) {
		f.things[id] = append(f.things[id], what)
	}
}

// of is what the footprint holds of id.
func (f *footprint) of(id string) []string { return f.things[id] }

// unowned is what no id of owned accounts for, with veths beyond
// wantVeths.
func (f *footprint) unowned(owned map[string]bool, wantVeths int) []string {
	var out []string
	for id, things := range f.things {
		if !owned[id] {
			out = append(out, things...)
		}
	}
	if len(f.veths) > wantVeths {
		out = append(out, fmt.Sprintf("%d veths on the bridge, %d pods with a network: %q", len(f.veths), wantVeths, f.veths))
	}
	slices.Sort(out)
	return out
}

// auraedStateDir is the state dir of the auraed the CRI uses: its own
// (embedded), or auraed's when it runs apart.
func (c *CRI) auraedStateDir(apart *Auraed) string {
	if apart != nil {
		return apart.StateDir
	}
	return filepath.Join(c.StateDir, "auraed")
}

// auraedSocket is the socket of the auraed the CRI uses.
func (c *CRI) auraedSocket(apart *Auraed) string {
	if apart != nil {
		return apart.Socket
	}
	return filepath.Join(c.StateDir, "auraed", "aurae.sock")
}

// footprint takes stock of what aurae-cri (with its auraed: embedded when
// apart is nil) made on the machine: mounts under the state dirs, rootfs
// and auraed's pod and container dirs, aurae-cri's on-disk records of its
// pods and containers, host-local addresses, iptables
// rules of the test's CNI network, cgroups under the cgroup root(s),
// processes (conmon, holders, containers' and exec'd processes, stray
// containerds), veths on the bridge, the pods and containers auraed holds
// (when it answers), and rootfs snapshots and leases (when ctrd is not
// nil). Leases are keyed by the id whose RootfsLease they are among ids;
// image volumes (their mount, view and lease) by the hex of their image's id.
func (c *CRI) footprint(t testing.TB, apart *Auraed, ctrd *containerd.Client, ids map[string]bool) *footprint {
	t.Helper()
	f := &footprint{}
	states := []string{c.StateDir}
	if apart != nil {
		states = append(states, apart.StateDir)
	}
	under := func(p string) bool {
		return slices.ContainsFunc(states, func(s string) bool { return p == s || strings.HasPrefix(p, s+"/") })
	}
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(mi), "\n") {
		if fields := strings.Fields(line); len(fields) > 4 && under(fields[4]) {
			for _, id := range idsIn(fields[4]) {
				f.add(id, "mount: "+fields[4])
			}
		}
	}
	ast := c.auraedStateDir(apart)
	for _, dir := range []string{
		filepath.Join(c.StateDir, "containers"),
		filepath.Join(c.StateDir, "records", "pods"), filepath.Join(c.StateDir, "records", "containers"),
		filepath.Join(ast, "pods", "pods"), filepath.Join(ast, "pods", "containers"),
		filepath.Join(ast, "pods", "attach"), filepath.Join(ast, "pods", "runc"), filepath.Join(ast, "pods", "exits"),
	} {
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			for _, id := range idsIn(e.Name()) {
				f.add(id, "file "+filepath.Join(dir, e.Name()))
			}
		}
	}
	_ = filepath.WalkDir(filepath.Join(filepath.Dir(c.LogDir), "ipam"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			if b, err := os.ReadFile(p); err == nil {
				for _, id := range idsIn(string(b)) {
					f.add(id, "host-local address "+p)
				}
			}
		}
		return nil
	})
	network := `name: \"e2e-` + c.Bridge + `\"`
	for _, table := range []string{"nat", "filter"} {
		b, err := exec.Command("iptables-save", "-t", table).CombinedOutput()
		if err != nil {
			t.Fatalf("iptables-save: %v: %s", err, b)
		}
		for _, line := range strings.Split(string(b), "\n") {
			if strings.Contains(line, network) {
				for _, id := range idsIn(line) {
					f.add(id, "iptables "+table+": "+line)
				}
			}
		}
	}
	roots, _ := filepath.Glob(filepath.Join(cgroup.Root, "*", c.CgroupRoot))
	more, _ := filepath.Glob(filepath.Join(cgroup.Root, c.CgroupRoot))
	cgroupRoots := []string{c.CgroupRoot}
	if apart != nil && apart.CgroupRoot != c.CgroupRoot {
		cgroupRoots = append(cgroupRoots, apart.CgroupRoot)
		r, _ := filepath.Glob(filepath.Join(cgroup.Root, "*", apart.CgroupRoot))
		roots = append(roots, r...)
	}
	for _, root := range append(roots, more...) {
		_ = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				for _, id := range idsIn(d.Name()) {
					f.add(id, "cgroup "+p)
				}
			}
			return nil
		})
	}
	c.processes(t, f, states, cgroupRoots, apart)
	if b, err := exec.Command("ip", "-o", "link", "show", "master", c.Bridge).CombinedOutput(); err != nil {
		// No bridge yet (no pod got a network so far): no veth either.
		if !strings.Contains(string(b), "does not exist") {
			t.Fatalf("ip link: %v: %s", err, b)
		}
	} else {
		for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
			if fields := strings.Fields(line); len(fields) > 1 {
				f.veths = append(f.veths, strings.TrimSuffix(fields[1], ":"))
			}
		}
	}
	c.auraedRecords(t, f, apart)
	if ctrd != nil {
		c.rootfsRecords(t, f, ctrd, ids)
	}
	return f
}

// processes adds the processes of the test's daemons: those whose command
// line names a state dir or that run in a cgroup under a cgroup root.
// aurae-cri and a running auraed are the daemons, not leaks; a containerd
// of the state dir other than the running aurae-cri's child is one.
func (c *CRI) processes(t testing.TB, f *footprint, states, cgroupRoots []string, apart *Auraed) {
	t.Helper()
	daemons := map[int]bool{}
	for _, a := range []*Auraed{c.Auraed, apart} {
		if a == nil {
			continue
		}
		a.mu.Lock()
		if a.cmd != nil && a.cmd.Process != nil {
			select {
			case <-a.exited:
			default:
				daemons[a.cmd.Process.Pid] = true
			}
		}
		a.mu.Unlock()
	}
	procs, _ := filepath.Glob("/proc/[0-9]*")
	for _, p := range procs {
		b, err := os.ReadFile(filepath.Join(p, "cmdline"))
		if err != nil || len(b) == 0 {
			continue // gone, or a kernel thread
		}
		cmdline := strings.TrimSpace(strings.ReplaceAll(string(b), "\x00", " "))
		cg, _ := os.ReadFile(filepath.Join(p, "cgroup"))
		mine := slices.ContainsFunc(states, func(s string) bool { return strings.Contains(cmdline, s+"/") || strings.Contains(cmdline, s+" ") }) ||
			slices.ContainsFunc(cgroupRoots, func(r string) bool { return strings.Contains(string(cg), "/"+r+"/") })
		if !mine {
			continue
		}
		var pid, ppid int
		if st, err := os.ReadFile(filepath.Join(p, "stat")); err == nil {
			// pid (comm) state ppid ...: comm may hold spaces.
			if i := strings.LastIndexByte(string(st), ')'); i > 0 {
				if f := strings.Fields(string(st[i+1:])); len(f) > 1 {
					ppid, _ = strconv.Atoi(f[1])
				}
			}
			_, _ = fmt.Sscanf(string(st), "%d", &pid)
		}
		if daemons[pid] {
			continue
		}
		what := fmt.Sprintf("process %d: %s", pid, cmdline)
		if strings.Contains(cmdline, "containerd --config") {
			if !daemons[ppid] {
				f.add("", "containerd not of the running aurae-cri: "+what)
			}
			continue
		}
		ids := idsIn(cmdline)
		for _, line := range strings.Split(string(cg), "\n") {
			ids = append(ids, idsIn(line)...)
		}
		if len(ids) == 0 {
			// Short-lived helpers of a running daemon (runc, CNI
			// plugins) come and go; an orphan is a leak.
			if !daemons[ppid] {
				f.add("", what)
			}
			continue
		}
		for _, id := range ids {
			f.add(id, what)
		}
	}
}

// auraedRecords adds the pods and containers auraed holds, when it
// answers.
func (c *CRI) auraedRecords(t testing.TB, f *footprint, apart *Auraed) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	cl, err := client.Dial(ctx, "unix://"+c.auraedSocket(apart))
	if err != nil {
		return
	}
	defer func() { _ = cl.Close() }()
	pods := podsv0.NewPodServiceClient(cl.Conn)
	token := ""
	for {
		resp, err := pods.ListPods(ctx, &podsv0.ListPodsRequest{PageToken: token})
		if err != nil {
			return // not running: what it holds is on disk, above
		}
		for _, p := range resp.GetPods() {
			f.add(p.GetPod().GetId(), "auraed pod "+p.GetPod().GetId())
			for _, ct := range p.GetContainers() {
				f.add(ct.GetId(), "auraed container "+ct.GetId()+" of pod "+p.GetPod().GetId())
			}
		}
		if token = resp.GetNextPageToken(); token == "" {
			return
		}
	}
}

// rootfsRecords adds the containers' rootfs snapshots and leases in
// aurae-cri's containerd; a lease is keyed by the id among ids (and those
// already seen) whose RootfsLease it is, else "".
func (c *CRI) rootfsRecords(t testing.TB, f *footprint, ctrd *containerd.Client, ids map[string]bool) {
	t.Helper()
	ctx := namespaces.WithNamespace(t.Context(), image.DefaultNamespace)
	err := ctrd.SnapshotService(image.DefaultSnapshotter).Walk(ctx, func(_ context.Context, info snapshots.Info) error {
		if id, ok := strings.CutPrefix(info.Name, image.RootfsKey("")); ok {
			f.add(id, "snapshot "+info.Name)
		}
		if image.IsImageVolumeKey(info.Name) {
			f.add(filepath.Base(info.Name), "image volume snapshot "+info.Name)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("list snapshots: %v", err)
	}
	ls, err := ctrd.LeasesService().List(ctx)
	if err != nil {
		t.Fatalf("list leases: %v", err)
	}
	byLease := map[string]string{}
	for id := range ids {
		byLease[image.RootfsLease(id)] = id
	}
	for id := range f.things {
		byLease[image.RootfsLease(id)] = id
	}
	for _, l := range ls {
		if imageID, ok := l.Labels[image.LabelImageVolume]; ok {
			// Keyed by the hex of the image's id, as its mount.
			f.add(strings.TrimPrefix(imageID, "sha256:"), "image volume lease "+l.ID)
			continue
		}
		if !strings.HasPrefix(l.ID, image.RootfsLease("")[:len("aurae-cri.rootfs.")]) {
			continue
		}
		f.add(byLease[l.ID], "lease "+l.ID)
	}
}

func idsIn(s string) []string {
	return objectID.FindAllString(s, -1)
}
