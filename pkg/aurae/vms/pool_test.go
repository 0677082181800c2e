package vms

import (
	"errors"
	"sync"
	"testing"

	"github.com/containerd/errdefs"
)

// Hypervisor users are unique across VMs starting at once and pooled VMs,
// the last of the range stays the template makers', and a released
// pooled VM's user is given again.
func TestHypervisorUsersAreUniqueWithThePool(t *testing.T) {
	s := &Service{
		cfg:  Config{UIDBase: 1000, UIDCount: 9},
		vms:  map[string]*vm{},
		pool: &vmPool{size: 2, users: map[uint32]bool{}},
	}
	var vs []*vm
	for _, id := range []string{"a", "b", "c", "d"} {
		v := &vm{id: id}
		s.vms[id] = v
		vs = append(vs, v)
	}
	got := map[uint32]string{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	record := func(uid uint32, who string) {
		mu.Lock()
		defer mu.Unlock()
		if o, ok := got[uid]; ok {
			t.Errorf("user %d given to %s and %s", uid, o, who)
		}
		got[uid] = who
	}
	for _, v := range vs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			uid, err := s.takeUser(v)
			if err != nil {
				t.Error(err)
				return
			}
			record(uid, v.id)
		}()
	}
	for _, who := range []string{"pool1", "pool2", "pool3", "pool4"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			uid, err := s.freeUser()
			if err != nil {
				t.Error(err)
				return
			}
			record(uid, who)
		}()
	}
	wg.Wait()
	if len(got) != 8 {
		t.Fatalf("%d users given, want 8", len(got))
	}
	for uid := range got {
		if uid < 1000 || uid >= 1008 {
			t.Errorf("user %d outside 1000..1007 (1008 is the template makers')", uid)
		}
	}
	if _, err := s.freeUser(); !errors.Is(err, errdefs.ErrResourceExhausted) {
		t.Fatalf("a 9th user: %v, want ResourceExhausted", err)
	}
	var pooledUID uint32
	for uid, who := range got {
		if who == "pool3" {
			pooledUID = uid
		}
	}
	s.releaseUser(pooledUID)
	uid, err := s.freeUser()
	if err != nil || uid != pooledUID {
		t.Fatalf("after a release: user %d, %v; want %d", uid, err, pooledUID)
	}
}
