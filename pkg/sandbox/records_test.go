package sandbox

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

func recordIDs(t *testing.T, dir, kind string) []string {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(dir, recordsDir, kind))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

func newRecordedPod(t *testing.T, s *Store, id string) *Sandbox {
	t.Helper()
	sb := &Sandbox{ID: id, Name: "pod_ns_" + id[:4] + "_0", CreatedAt: time.Now(), RuntimeHandler: "h",
		Config: &runtimeapi.PodSandboxConfig{Metadata: &runtimeapi.PodSandboxMetadata{Name: "pod", Namespace: "ns", Uid: id[:4]}, Labels: map[string]string{"a": "b"}},
		Status: SandboxStatus{State: runtimeapi.PodSandboxState_SANDBOX_READY, NetNSPath: "/run/netns/" + id, NetworkUp: true, IPs: []string{"10.0.0.2"}}}
	if err := s.ReserveName(sb.Name, id); err != nil {
		t.Fatal(err)
	}
	if err := s.AddSandbox(sb); err != nil {
		t.Fatal(err)
	}
	return sb
}

// TestRecordsFollowTheStore: a record is written with the object, follows
// its state changes, goes with its removal; the records read back are the
// objects, and restored they are the store's again.
func TestRecordsFollowTheStore(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !s.Fresh() || s.MovedAside() != "" {
		t.Fatalf("a new file: fresh %v, moved aside %q", s.Fresh(), s.MovedAside())
	}
	pod, ctr := strings.Repeat("a", 64), strings.Repeat("b", 64)
	newRecordedPod(t, s, pod)
	c := &Container{ID: ctr, SandboxID: pod, Name: "c_pod", CreatedAt: time.Now(), Spec: []byte(`{"ociVersion":"1.2.0"}`), ImageRef: "img",
		Config: &runtimeapi.ContainerConfig{Metadata: &runtimeapi.ContainerMetadata{Name: "c"}},
		Status: ContainerStatus{State: runtimeapi.ContainerState_CONTAINER_CREATED}}
	if err := s.AddContainer(c); err != nil {
		t.Fatal(err)
	}
	if _, err := s.UpdateContainer(ctr, func(st ContainerStatus) (ContainerStatus, error) {
		st.State, st.Pid, st.StartedAt = runtimeapi.ContainerState_CONTAINER_RUNNING, 7, time.Now()
		return st, nil
	}); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, recordsDir, "containers", ctr+".json"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("container record: %v %v", fi, err)
	}
	recs, err := s.ReadRecords()
	if err != nil {
		t.Fatal(err)
	}
	if len(recs.Sandboxes) != 1 || len(recs.Containers) != 1 || len(recs.Refused) != 0 {
		t.Fatalf("records: %+v", recs)
	}
	got := recs.Containers[0]
	if got.Status.State != runtimeapi.ContainerState_CONTAINER_RUNNING || got.Status.Pid != 7 || got.Config.GetMetadata().GetName() != "c" {
		t.Fatalf("container record after its start: %+v", got)
	}
	if sb := recs.Sandboxes[0]; sb.Config.GetLabels()["a"] != "b" || !sb.Status.NetworkUp || sb.RuntimeHandler != "h" {
		t.Fatalf("pod record: %+v", sb)
	}

	// Restored in an empty store, they are what was stored.
	s2, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = s2.Close() }()
	if err := s2.RestoreContainer(got); err == nil {
		t.Fatal("a container restored without its pod")
	}
	if err := s2.RestoreSandbox(recs.Sandboxes[0]); err != nil {
		t.Fatal(err)
	}
	if err := s2.RestoreContainer(got); err != nil {
		t.Fatal(err)
	}
	if err := s2.RestoreSandbox(recs.Sandboxes[0]); err == nil {
		t.Fatal("a pod restored twice")
	}
	if holder, _ := s2.NameHolder("c_pod"); holder != ctr {
		t.Fatalf("name of the restored container held by %q", holder)
	}

	if err := s.DeleteContainer(ctr); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteSandbox(pod); err != nil {
		t.Fatal(err)
	}
	if p, c := recordIDs(t, dir, "pods"), recordIDs(t, dir, "containers"); len(p)+len(c) != 0 {
		t.Fatalf("records left after removal: %v %v", p, c)
	}
	s = reopen(t, s, dir)
	defer func() { _ = s.Close() }()
	if s.Fresh() {
		t.Fatal("a file read back is fresh")
	}
}

// TestSyncRecords: at a normal start, a stored object without a record
// gets one, a record the store does not hold goes (unless an intent names
// it: the intent's undo takes it), and so does a temporary file.
func TestSyncRecords(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = s.Close() }()
	kept, stale, pending := strings.Repeat("1", 64), strings.Repeat("2", 64), strings.Repeat("3", 64)
	newRecordedPod(t, s, kept)
	if err := os.Remove(filepath.Join(dir, recordsDir, "pods", kept+".json")); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{stale + ".json", pending + ".json", "." + stale + ".tmp"} {
		if err := os.WriteFile(filepath.Join(dir, recordsDir, "pods", name), []byte("{}"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.PutIntent(Intent{Kind: IntentSandbox, ID: pending, Name: "p"}); err != nil {
		t.Fatal(err)
	}
	written, removed, err := s.SyncRecords()
	if err != nil || len(written) != 1 || len(removed) != 2 {
		t.Fatalf("sync: written %v removed %v: %v", written, removed, err)
	}
	if got := strings.Join(recordIDs(t, dir, "pods"), " "); got != kept+".json "+pending+".json" {
		t.Fatalf("records after sync: %s", got)
	}
	// The intent's undo takes its record.
	if err := s.DeleteIntent(pending); err != nil {
		t.Fatal(err)
	}
	if got := recordIDs(t, dir, "pods"); len(got) != 1 {
		t.Fatalf("records after the undo: %v", got)
	}
}

// TestReadRecordsRefuses: a record that is garbled, too big, of another
// kind, of another id or naming a pod id that is not one is refused,
// never used; an id that cannot name a file is refused at the write.
func TestReadRecordsRefuses(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = s.Close() }()
	id := func(c string) string { return strings.Repeat(c, 64) }
	plant := map[string]string{
		"pods/" + id("a") + ".json":       "{torn",
		"pods/" + id("b") + ".json":       `{"version":1,"kind":"container","object":{},"config":{}}`,
		"pods/" + id("c") + ".json":       `{"version":1,"kind":"sandbox","object":{"id":"` + id("d") + `","name":"x","status":{"state":0}},"config":{}}`,
		"pods/" + id("e") + ".json":       `{"version":2,"kind":"sandbox","object":{"id":"` + id("e") + `","name":"x"},"config":{}}`,
		"pods/" + id("f") + ".json":       `{"version":1,"kind":"sandbox","object":{"id":"` + id("f") + `","name":"x","status":{"state":7}},"config":{}}`,
		"containers/" + id("1") + ".json": `{"version":1,"kind":"container","object":{"id":"` + id("1") + `","sandbox_id":"../x","name":"x","spec":"e30="},"config":{}}`,
		"containers/" + id("2") + ".json": `{"version":1,"kind":"container","object":{"id":"` + id("2") + `","sandbox_id":"` + id("a") + `","name":"x","spec":"bm90IGpzb24="},"config":{}}`,
		"containers/" + id("3") + ".json": `{"version":1,"kind":"container","object":{"id":"` + id("3") + `","sandbox_id":"` + id("a") + `","name":"x","spec":"e30=","status":{"state":9}},"config":{}}`,
		"containers/" + id("4") + ".json": `{"version":1,"kind":"container","object":{"id":"` + id("4") + `","sandbox_id":"` + id("a") + `","name":"x","spec":"e30="},"config":{"bogus":1}}`,
		"containers/short.json":           "{}",
	}
	for name, content := range plant {
		if err := os.WriteFile(filepath.Join(dir, recordsDir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	big := filepath.Join(dir, recordsDir, "pods", id("9")+".json")
	if err := os.WriteFile(big, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(big, maxRecordSize+1); err != nil {
		t.Fatal(err)
	}
	recs, err := s.ReadRecords()
	if err != nil {
		t.Fatal(err)
	}
	if len(recs.Sandboxes)+len(recs.Containers) != 0 || len(recs.Refused) != len(plant)+1 {
		for _, r := range recs.Refused {
			t.Logf("refused %s: %v", filepath.Base(r.Path), r.Err)
		}
		t.Fatalf("read %d pods, %d containers, refused %d of %d", len(recs.Sandboxes), len(recs.Containers), len(recs.Refused), len(plant)+1)
	}
	for _, bad := range []string{"../x", ".x", ""} {
		if err := s.AddSandbox(&Sandbox{ID: bad, Name: "n" + bad, Config: &runtimeapi.PodSandboxConfig{}}); err == nil {
			t.Errorf("pod id %q stored", bad)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "x.json")); !os.IsNotExist(err) {
		t.Errorf("a record escaped its directory: %v", err)
	}
}
