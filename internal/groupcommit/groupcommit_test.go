package groupcommit

import (
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

func openDB(t *testing.T) *bolt.DB {
	t.Helper()
	db, err := bolt.Open(filepath.Join(t.TempDir(), "test.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	if err := db.Update(func(tx *bolt.Tx) error { _, err := tx.CreateBucket([]byte("b")); return err }); err != nil {
		t.Fatal(err)
	}
	return db
}

func put(key string) func(*bolt.Tx) error {
	return func(tx *bolt.Tx) error { return tx.Bucket([]byte("b")).Put([]byte(key), []byte("v")) }
}

func keys(t *testing.T, db *bolt.DB) int {
	t.Helper()
	n := 0
	if err := db.View(func(tx *bolt.Tx) error {
		return tx.Bucket([]byte("b")).ForEach(func(_, _ []byte) error { n++; return nil })
	}); err != nil {
		t.Fatal(err)
	}
	return n
}

// waitQueued waits until n writes wait behind the committing one.
func waitQueued(t *testing.T, c *Committer, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c.mu.Lock()
		q := len(c.queue)
		c.mu.Unlock()
		if q == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d writes queued, want %d", q, n)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestWritesDuringACommitShareTheNext: the writes that arrive while a
// transaction commits are committed together in the next one, and each
// caller returns once its write is committed.
func TestWritesDuringACommitShareTheNext(t *testing.T) {
	db := openDB(t)
	c := New(db)
	release := make(chan struct{})
	first := make(chan error, 1)
	go func() {
		first <- c.Update(func(tx *bolt.Tx) error {
			<-release
			return put("first")(tx)
		})
	}()
	for c.Commits() == 0 {
		time.Sleep(time.Millisecond)
	}
	const n = 10
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- c.Update(put(fmt.Sprintf("k%d", i)))
		}()
	}
	waitQueued(t, c, n)
	close(release)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if got := keys(t, db); got != n+1 {
		t.Errorf("%d keys, want %d", got, n+1)
	}
	if got := c.Commits(); got != 2 {
		t.Errorf("%d transactions for %d writes arriving during the first, want 2", got, n+1)
	}
}

// TestFailingWriteFailsOnlyItsCaller: a write that fails in a shared
// transaction fails its caller alone; the others are committed.
func TestFailingWriteFailsOnlyItsCaller(t *testing.T) {
	db := openDB(t)
	c := New(db)
	release := make(chan struct{})
	go func() {
		_ = c.Update(func(tx *bolt.Tx) error {
			<-release
			return nil
		})
	}()
	for c.Commits() == 0 {
		time.Sleep(time.Millisecond)
	}
	boom := errors.New("boom")
	results := make(chan error, 3)
	go func() { results <- c.Update(put("a")) }()
	waitQueued(t, c, 1)
	go func() { results <- c.Update(func(*bolt.Tx) error { return boom }) }()
	waitQueued(t, c, 2)
	go func() { results <- c.Update(put("b")) }()
	waitQueued(t, c, 3)
	close(release)
	var failed int
	for range 3 {
		if err := <-results; errors.Is(err, boom) {
			failed++
		} else if err != nil {
			t.Fatal(err)
		}
	}
	if failed != 1 {
		t.Errorf("%d callers failed, want the one whose write failed", failed)
	}
	if got := keys(t, db); got != 2 {
		t.Errorf("%d keys, want the two good writes", got)
	}
}

// TestLoneWritesCommitAtOnce: one write at a time is one transaction
// each, with no waiting for company.
func TestLoneWritesCommitAtOnce(t *testing.T) {
	db := openDB(t)
	c := New(db)
	for i := range 5 {
		if err := c.Update(put(fmt.Sprintf("k%d", i))); err != nil {
			t.Fatal(err)
		}
	}
	if got := c.Commits(); got != 5 {
		t.Errorf("%d transactions for 5 lone writes", got)
	}
}

// TestManyWriters: writers hammering at once all get their writes in.
func TestManyWriters(t *testing.T) {
	db := openDB(t)
	c := New(db)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 50 {
				if err := c.Update(put(fmt.Sprintf("g%d-%d", g, i))); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if got := keys(t, db); got != 400 {
		t.Errorf("%d keys, want 400", got)
	}
	t.Logf("%d transactions for 400 writes", c.Commits())
}

// BenchmarkConcurrentWrites: 3 writers per core at once, each write
// fsynced, through a Committer and through bbolt's Update alone.
func BenchmarkConcurrentWrites(b *testing.B) {
	for _, tc := range []struct {
		name   string
		update func(c *Committer, db *bolt.DB) func(func(*bolt.Tx) error) error
	}{
		{"group", func(c *Committer, _ *bolt.DB) func(func(*bolt.Tx) error) error { return c.Update }},
		{"alone", func(_ *Committer, db *bolt.DB) func(func(*bolt.Tx) error) error { return db.Update }},
	} {
		b.Run(tc.name, func(b *testing.B) {
			db, err := bolt.Open(filepath.Join(b.TempDir(), "test.db"), 0o600, nil)
			if err != nil {
				b.Fatal(err)
			}
			defer func() { _ = db.Close() }()
			if err := db.Update(func(tx *bolt.Tx) error { _, err := tx.CreateBucket([]byte("b")); return err }); err != nil {
				b.Fatal(err)
			}
			update := tc.update(New(db), db)
			b.SetParallelism(3)
			var seq sync.Mutex
			n := 0
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					seq.Lock()
					n++
					k := fmt.Sprintf("k%d", n)
					seq.Unlock()
					if err := update(put(k)); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
