package pods

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/aurae-runtime/aurae-cri/internal/groupcommit"
)

// store persists pods and containers in a bbolt file, so that a restarted
// auraed knows what it ran. Every commit is fsynced: a power loss or kernel
// crash with unsynced commits can tear the file, not just lose its last
// writes. The cgroups, mounts and processes it describes die with the
// kernel, and recovery drops those. Writes of concurrent calls (pods and
// containers starting and going at once) share a commit: each put and
// delete stands alone, so they may (groupcommit).
type store struct {
	db     *bolt.DB
	writes *groupcommit.Committer

	// pendingMu guards pending: the deletions deleteSoon has not
	// committed yet, by bucket and key; a write of the same key waits
	// for its deletion. bg counts them, for close.
	pendingMu sync.Mutex
	pending   map[string]chan struct{}
	bg        sync.WaitGroup
}

var (
	bucketPods       = []byte("pods")
	bucketContainers = []byte("containers")
)

type podRecord struct {
	// Spec and Paths in protojson.
	Spec      json.RawMessage `json:"spec"`
	Paths     json.RawMessage `json:"paths"`
	Holder    holderRef       `json:"holder"`
	CreatedAt time.Time       `json:"created_at"`
	// Allocating: written before Allocate's first side effect and cleared
	// when it is done, so that recovery undoes an Allocate cut short.
	Allocating bool `json:"allocating,omitempty"`
}

func openStore(dir string) (*store, error) {
	db, err := bolt.Open(filepath.Join(dir, "pods.db"), 0o600, &bolt.Options{Timeout: 2 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("open state %s: %w", dir, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketPods, bucketContainers} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		_ = db.Close()
		return nil, err
	}
	return &store{db: db, writes: groupcommit.New(db), pending: map[string]chan struct{}{}}, nil
}

// close waits for the deletions deleteSoon began, then closes the file.
func (s *store) close() error {
	s.bg.Wait()
	return s.db.Close()
}

func (s *store) put(bucket []byte, key string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	s.awaitDeletion(bucket, key)
	return s.writes.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucket).Put([]byte(key), b) })
}

func (s *store) delete(bucket []byte, key string) error {
	s.awaitDeletion(bucket, key)
	return s.writes.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucket).Delete([]byte(key)) })
}

// deleteSoon deletes key from bucket off the caller's path: it returns at
// once, the deletion commits with the next writes; failed is called with
// its error. A put or delete of the key waits for it, and close. Only for
// records whose loss is harmless: recovery finishes what a deletion lost
// to a crash left (a container record without its bundle, see recover).
func (s *store) deleteSoon(bucket []byte, key string, failed func(error)) {
	k := pendingKey(bucket, key)
	done := make(chan struct{})
	s.pendingMu.Lock()
	prev := s.pending[k]
	s.pending[k] = done
	s.pendingMu.Unlock()
	s.bg.Add(1)
	go func() {
		defer s.bg.Done()
		if prev != nil {
			<-prev
		}
		err := s.writes.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucket).Delete([]byte(key)) })
		s.pendingMu.Lock()
		if s.pending[k] == done {
			delete(s.pending, k)
		}
		s.pendingMu.Unlock()
		close(done)
		if err != nil && failed != nil {
			failed(err)
		}
	}()
}

// pendingKey names key of bucket in store.pending.
func pendingKey(bucket []byte, key string) string { return string(bucket) + "/" + key }

// awaitDeletion waits for a deletion of key that deleteSoon began.
func (s *store) awaitDeletion(bucket []byte, key string) {
	s.pendingMu.Lock()
	ch := s.pending[pendingKey(bucket, key)]
	s.pendingMu.Unlock()
	if ch != nil {
		<-ch
	}
}

func (s *store) load() (map[string]podRecord, map[string]ctrRecord, error) {
	pods := map[string]podRecord{}
	ctrs := map[string]ctrRecord{}
	err := s.db.View(func(tx *bolt.Tx) error {
		err := tx.Bucket(bucketPods).ForEach(func(k, v []byte) error {
			var r podRecord
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("pod %q: %w", k, err)
			}
			pods[string(k)] = r
			return nil
		})
		if err != nil {
			return err
		}
		return tx.Bucket(bucketContainers).ForEach(func(k, v []byte) error {
			var r ctrRecord
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("container %q: %w", k, err)
			}
			ctrs[string(k)] = r
			return nil
		})
	})
	return pods, ctrs, err
}
