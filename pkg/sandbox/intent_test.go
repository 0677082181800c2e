package sandbox

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

func TestIntentSurvivesRestartUntilTheObjectIsStored(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	cfg := &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: "pod", Namespace: "ns", Uid: "uid"},
		PortMappings: []*runtimeapi.PortMapping{{ContainerPort: 80, HostPort: 8080}},
	}
	pod := Intent{Kind: IntentSandbox, ID: "p1", Name: "pod_ns_uid_0", CreatedAt: time.Now(), ControllerPod: true}
	if err := s.PutIntent(pod); err != nil {
		t.Fatal(err)
	}
	pod.Network, pod.NetNSPath, pod.Config = true, "/run/netns/p1", cfg
	if err := s.PutIntent(pod); err != nil {
		t.Fatal(err)
	}
	ctr := Intent{Kind: IntentContainer, ID: "c1", PodID: "p0", CreatedAt: time.Now(), Rootfs: true, Snapshot: "aurae-cri/rootfs/c1", RootfsDir: "/x/c1/rootfs"}
	if err := s.PutIntent(ctr); err != nil {
		t.Fatal(err)
	}
	// aurae-cri dies here: no Close.
	s2 := reopen(t, s, dir)
	got := s2.Intents()
	if len(got) != 2 || got[0].ID != "p1" || got[1].ID != "c1" {
		t.Fatalf("intents after restart: %+v", got)
	}
	if p := got[0]; p.State != IntentCreating || !p.ControllerPod || !p.Network || p.NetNSPath != "/run/netns/p1" ||
		p.Config.GetMetadata().GetUid() != "uid" || p.Config.GetPortMappings()[0].GetHostPort() != 8080 {
		t.Fatalf("pod intent after restart: %+v", p)
	}
	if c := got[1]; !c.Rootfs || c.Snapshot != "aurae-cri/rootfs/c1" || c.Config != nil {
		t.Fatalf("container intent after restart: %+v", c)
	}

	// Storing the pod completes its intent, in the same transaction.
	if err := s2.ReserveName("pod_ns_uid_0", "p1"); err != nil {
		t.Fatal(err)
	}
	if err := s2.AddSandbox(&Sandbox{ID: "p1", Name: "pod_ns_uid_0", Config: cfg, CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if err := s2.DeleteIntent("c1"); err != nil {
		t.Fatal(err)
	}
	s3 := reopen(t, s2, dir)
	defer func() { _ = s3.Close() }()
	if got := s3.Intents(); len(got) != 0 {
		t.Fatalf("intents left: %+v", got)
	}
	if _, err := s3.Sandbox("p1"); err != nil {
		t.Fatal(err)
	}
}

// reopen closes s (bbolt's lock) and opens dir again, as a restart does.
func reopen(t *testing.T, s *Store, dir string) *Store {
	t.Helper()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	return s2
}

func TestUnreadableFileIsMovedAside(t *testing.T) {
	for name, damage := range map[string]func(t *testing.T, path string){
		"not bbolt": func(t *testing.T, path string) {
			if err := os.WriteFile(path, []byte(strings.Repeat("not a database ", 2000)), 0o600); err != nil {
				t.Fatal(err)
			}
		},
		"bad record": func(t *testing.T, path string) {
			db, err := bolt.Open(path, 0o600, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = db.Close() }()
			if err := db.Update(func(tx *bolt.Tx) error {
				b, err := tx.CreateBucketIfNotExists(bucketSandboxes)
				if err != nil {
					return err
				}
				return b.Put([]byte("p1"), []byte("{torn"))
			}); err != nil {
				t.Fatal(err)
			}
		},
		"torn meta pages": func(t *testing.T, path string) {
			s, err := Open(filepath.Dir(path))
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			f, err := os.OpenFile(path, os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			// Both meta pages (the first two pages) overwritten.
			if _, err := f.WriteAt(make([]byte, 8192), 0); err != nil {
				t.Fatal(err)
			}
			_ = f.Close()
		},
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, dbFile)
			damage(t, path)
			s, err := Open(dir)
			if err != nil {
				t.Fatalf("open of a damaged file: %v", err)
			}
			defer func() { _ = s.Close() }()
			if s.MovedAside() == "" || len(s.Sandboxes()) != 0 {
				t.Fatalf("moved aside to %q, %d pods", s.MovedAside(), len(s.Sandboxes()))
			}
			if _, err := os.Stat(s.MovedAside()); err != nil {
				t.Fatalf("the damaged file is not kept: %v", err)
			}
			// The new store works and is read back.
			if err := s.PutIntent(Intent{Kind: IntentSandbox, ID: "p2"}); err != nil {
				t.Fatal(err)
			}
			s2 := reopen(t, s, dir)
			if s2.MovedAside() != "" || len(s2.Intents()) != 1 {
				t.Fatalf("second open: moved aside %q, intents %+v", s2.MovedAside(), s2.Intents())
			}
			s = s2
		})
	}
}

func TestLockedFileIsNotMovedAside(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = s.Close() }()
	// Another aurae-cri holds the file: an error, and the file stays.
	if _, err := Open(dir); err == nil {
		t.Fatal("second open of a locked file succeeded")
	}
	if m, _ := filepath.Glob(filepath.Join(dir, dbFile+".corrupt-*")); len(m) != 0 {
		t.Fatalf("a locked file was moved aside: %v", m)
	}
}

// BenchmarkIntentCommit is the cost of one fsynced commit, the unit of
// what RunPodSandbox (two intents and the pod) and CreateContainer (two
// intents and the container) now write before answering.
func BenchmarkIntentCommit(b *testing.B) {
	s, err := Open(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = s.Close() }()
	in := Intent{Kind: IntentSandbox, ID: "p", CreatedAt: time.Now(), ControllerPod: true}
	b.ResetTimer()
	for range b.N {
		if err := s.PutIntent(in); err != nil {
			b.Fatal(err)
		}
	}
}
