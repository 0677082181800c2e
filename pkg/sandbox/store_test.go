package sandbox

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

func TestStorePersistsAndReloads(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.ReserveName("pod_ns_uid_0", "abc123"); err != nil {
		t.Fatal(err)
	}
	sb := &Sandbox{ID: "abc123", Name: "pod_ns_uid_0", CreatedAt: time.Now(),
		Config: &runtimeapi.PodSandboxConfig{Metadata: &runtimeapi.PodSandboxMetadata{Name: "pod", Namespace: "ns", Uid: "uid"}, Labels: map[string]string{"a": "b"}},
		Status: SandboxStatus{State: runtimeapi.PodSandboxState_SANDBOX_READY, IPs: []string{"10.0.0.2"}, NetworkUp: true}}
	if err := s.AddSandbox(sb); err != nil {
		t.Fatal(err)
	}
	c := &Container{ID: "def456", SandboxID: "abc123", Name: "ctr_pod_ns_uid_0", CreatedAt: time.Now(), Spec: []byte(`{"ociVersion":"1.2.0"}`),
		Config: &runtimeapi.ContainerConfig{Metadata: &runtimeapi.ContainerMetadata{Name: "ctr"}},
		Status: ContainerStatus{State: runtimeapi.ContainerState_CONTAINER_CREATED}}
	if err := s.ReserveName(c.Name, c.ID); err != nil {
		t.Fatal(err)
	}
	if err := s.AddContainer(c); err != nil {
		t.Fatal(err)
	}
	if _, err := s.UpdateContainer("def", func(st ContainerStatus) (ContainerStatus, error) {
		st.State, st.Pid = runtimeapi.ContainerState_CONTAINER_RUNNING, 99
		return st, nil
	}); err != nil {
		t.Fatal(err)
	}
	// A failing update changes nothing.
	if _, err := s.UpdateContainer("def456", func(st ContainerStatus) (ContainerStatus, error) {
		st.Pid = 1
		return st, errors.New("no")
	}); err == nil {
		t.Fatal("failing update succeeded")
	}
	s = reopen(t, s, dir)
	defer func() { _ = s.Close() }()
	got, err := s.Sandbox("abc")
	if err != nil || got.Config.GetLabels()["a"] != "b" || !got.Status.NetworkUp || got.Status.IPs[0] != "10.0.0.2" {
		t.Fatalf("reloaded sandbox %+v %v", got, err)
	}
	gc, err := s.Container("def456")
	if err != nil || gc.Status.Pid != 99 || gc.Status.State != runtimeapi.ContainerState_CONTAINER_RUNNING || gc.Config.GetMetadata().GetName() != "ctr" {
		t.Fatalf("reloaded container %+v %v", gc, err)
	}
	if err := s.ReserveName("pod_ns_uid_0", "other"); !errdefs.IsAlreadyExists(err) {
		t.Fatalf("name of a reloaded pod not reserved: %v", err)
	}
	if err := s.DeleteContainer("def456"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Container("def456"); !errdefs.IsNotFound(err) {
		t.Fatalf("deleted container: %v", err)
	}
	if err := s.ReserveName(c.Name, "other"); err != nil {
		t.Fatalf("name of a deleted container still held: %v", err)
	}
}

func TestStoreIDPrefixes(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = s.Close() }()
	for _, id := range []string{"aaa111", "aaa222"} {
		if err := s.AddSandbox(&Sandbox{ID: id, Name: id, Config: &runtimeapi.PodSandboxConfig{}}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Sandbox("aaa"); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("ambiguous prefix: %v", err)
	}
	if sb, err := s.Sandbox("aaa2"); err != nil || sb.ID != "aaa222" {
		t.Fatalf("unique prefix: %v %v", sb.ID, err)
	}
	if _, err := s.Sandbox(""); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("empty id: %v", err)
	}
	if _, err := s.Sandbox("zzz"); !errdefs.IsNotFound(err) {
		t.Fatalf("unknown id: %v", err)
	}
}

func TestEventsDoNotBlock(t *testing.T) {
	e := NewEvents()
	ch, cancel := e.Subscribe()
	defer cancel()
	for i := 0; i < 5000; i++ {
		e.Publish(&runtimeapi.ContainerEventResponse{ContainerId: "x"})
	}
	if len(ch) != cap(ch) {
		t.Fatalf("subscriber got %d of its %d buffer", len(ch), cap(ch))
	}
}

// TestReadsDoNotWaitForAChange: while a change is in progress (here held
// inside its Update function; in production, in bbolt's fsync and the
// record's), reads answer; a second change waits for the first.
func TestReadsDoNotWaitForAChange(t *testing.T) {
	s, err := OpenWith(t.TempDir(), Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = s.Close() }()
	sb := &Sandbox{ID: "p1", Name: "p_ns_uid_0", CreatedAt: time.Now(), Config: &runtimeapi.PodSandboxConfig{},
		Status: SandboxStatus{State: runtimeapi.PodSandboxState_SANDBOX_READY}}
	c := &Container{ID: "c1", SandboxID: "p1", Name: "c_p_ns_uid_0", CreatedAt: time.Now(), Config: &runtimeapi.ContainerConfig{},
		Status: ContainerStatus{State: runtimeapi.ContainerState_CONTAINER_CREATED}}
	for _, err := range []error{s.ReserveName(sb.Name, sb.ID), s.AddSandbox(sb), s.ReserveName(c.Name, c.ID), s.AddContainer(c)} {
		if err != nil {
			t.Fatal(err)
		}
	}
	inside, release := make(chan struct{}), make(chan struct{})
	updated := make(chan error, 1)
	go func() {
		_, err := s.UpdateContainer("c1", func(st ContainerStatus) (ContainerStatus, error) {
			close(inside)
			<-release
			st.State = runtimeapi.ContainerState_CONTAINER_RUNNING
			return st, nil
		})
		updated <- err
	}()
	<-inside
	second := make(chan error, 1)
	go func() {
		_, err := s.UpdateSandbox("p1", func(st SandboxStatus) (SandboxStatus, error) { return st, nil })
		second <- err
	}()
	read := make(chan error, 1)
	go func() {
		got, err := s.Container("c1")
		if err == nil && got.Status.State != runtimeapi.ContainerState_CONTAINER_CREATED {
			err = fmt.Errorf("read the uncommitted state %v", got.Status.State)
		}
		if err == nil && (len(s.Containers()) != 1 || len(s.Sandboxes()) != 1 || len(s.Intents()) != 0) {
			err = errors.New("lists during a change")
		}
		if _, ok := s.NameHolder(c.Name); !ok && err == nil {
			err = errors.New("name not held during a change")
		}
		read <- err
	}()
	select {
	case err := <-read:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second): // not a latency bound: a read that waits for the change never returns
		close(release)
		t.Fatal("reads wait for a change in progress")
	}
	select {
	case err := <-second:
		t.Fatalf("a second change did not wait for the first: %v", err)
	default:
	}
	close(release)
	if err := <-updated; err != nil {
		t.Fatal(err)
	}
	if err := <-second; err != nil {
		t.Fatal(err)
	}
	if got, err := s.Container("c1"); err != nil || got.Status.State != runtimeapi.ContainerState_CONTAINER_RUNNING {
		t.Fatalf("after the change: %v %v", got.Status.State, err)
	}
}

// TestDeleteRemovedContainer: a container marked Removing is gone from
// the store (and its name free) at once and from the disk once Close has
// returned, after its last step ran; one whose last step fails stays on
// disk, REMOVING, for recovery; one not marked is deleted as
// DeleteContainer does.
func TestDeleteRemovedContainer(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	sb := addReadyPod(t, s, strings.Repeat("ab", 32))
	// Ids of the form aurae-cri gives (on-disk records are named by them).
	ids := map[string]string{}
	for _, n := range []string{"removing1", "removing2", "plain1", "unknown", "lastfails"} {
		h := sha256.Sum256([]byte(n))
		ids[n] = hex.EncodeToString(h[:])
	}
	for _, n := range []string{"removing1", "removing2", "plain1", "lastfails"} {
		id := ids[n]
		c := &Container{ID: id, SandboxID: sb.ID, Name: "ctr_" + n, CreatedAt: time.Now(), Spec: []byte(`{}`),
			Config: &runtimeapi.ContainerConfig{Metadata: &runtimeapi.ContainerMetadata{Name: n}},
			Status: ContainerStatus{State: runtimeapi.ContainerState_CONTAINER_EXITED}}
		if err := s.ReserveName(c.Name, c.ID); err != nil {
			t.Fatal(err)
		}
		if err := s.AddContainer(c); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range []string{"removing1", "removing2", "lastfails"} {
		if _, err := s.UpdateContainer(ids[n], func(st ContainerStatus) (ContainerStatus, error) {
			st.Removing = true
			return st, nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	var ran sync.Map
	for _, n := range []string{"removing1", "removing2", "plain1", "unknown", "lastfails"} {
		id := ids[n]
		last := func() error {
			ran.Store(n, true)
			if n == "lastfails" {
				return errors.New("snapshot removal failed")
			}
			return nil
		}
		if err := s.DeleteRemovedContainer(id, last); err != nil {
			t.Fatalf("DeleteRemovedContainer(%s): %v", id, err)
		}
		if _, err := s.Container(id); !errdefs.IsNotFound(err) {
			t.Fatalf("container %s after DeleteRemovedContainer: %v, want not found", id, err)
		}
		if err := s.ReserveName("ctr_"+n, "other-"+n); err != nil {
			t.Fatalf("name of %s still held: %v", n, err)
		}
	}
	s = reopen(t, s, dir)
	defer func() { _ = s.Close() }()
	for _, n := range []string{"removing1", "removing2", "plain1", "lastfails"} {
		if _, ok := ran.Load(n); !ok {
			t.Errorf("the last step of %s's removal did not run", n)
		}
	}
	if cs := s.Containers(); len(cs) != 1 || cs[0].ID != ids["lastfails"] || !cs[0].Status.Removing {
		t.Fatalf("containers after reopening: %+v, want lastfails alone, REMOVING", cs)
	}
	recs, err := s.ReadRecords()
	if err != nil {
		t.Fatal(err)
	}
	if len(recs.Containers) != 1 || len(recs.Refused) != 0 {
		t.Fatalf("on-disk container records after reopening: %d (refused %+v), want lastfails's", len(recs.Containers), recs.Refused)
	}
}

// addReadyPod adds a ready pod id named pod_ns_uid_0, its name reserved.
func addReadyPod(t *testing.T, s *Store, id string) *Sandbox {
	t.Helper()
	sb := &Sandbox{ID: id, Name: "pod_ns_uid_0", CreatedAt: time.Now(),
		Config: &runtimeapi.PodSandboxConfig{Metadata: &runtimeapi.PodSandboxMetadata{Name: "pod", Namespace: "ns", Uid: "uid"}},
		Status: SandboxStatus{State: runtimeapi.PodSandboxState_SANDBOX_READY}}
	if err := s.ReserveName(sb.Name, sb.ID); err != nil {
		t.Fatal(err)
	}
	if err := s.AddSandbox(sb); err != nil {
		t.Fatal(err)
	}
	return sb
}
