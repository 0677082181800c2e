// Package groupcommit commits the writes of concurrent callers to a bbolt
// file in one transaction: one fsync for all of them, where each would
// wait for its own after the others'.
//
// A write that arrives while a transaction is committing waits for it and
// goes into the next one, with every write that arrived meanwhile: there
// is no delay when writes come one at a time, and under load each waits
// for at most two commits. The caller whose write starts a transaction
// commits it; it then hands the next one to a caller still waiting, so
// no caller commits for the others for long.
//
// As with bbolt's own Batch, a write function may run more than once: when
// the shared transaction fails, each write is retried in a transaction of
// its own, so that one failing write fails only its caller. Write
// functions must therefore only write (puts and deletes) and not depend
// on running once.
package groupcommit

import (
	"sync"
	"sync/atomic"

	bolt "go.etcd.io/bbolt"
)

// Committer groups the writes to one bbolt file.
type Committer struct {
	db *bolt.DB

	mu      sync.Mutex
	queue   []*write
	leading bool

	commits atomic.Uint64
}

type write struct {
	fn   func(*bolt.Tx) error
	err  chan error
	lead chan struct{}
}

// New groups the writes to db.
func New(db *bolt.DB) *Committer { return &Committer{db: db} }

// Update runs fn in a read-write transaction, shared with the writes of
// other callers, and returns when that transaction is committed (fsynced,
// unless the file was opened with NoSync), or failed. fn may run more than
// once (see the package comment).
func (c *Committer) Update(fn func(*bolt.Tx) error) error {
	w := &write{fn: fn, err: make(chan error, 1), lead: make(chan struct{}, 1)}
	c.mu.Lock()
	c.queue = append(c.queue, w)
	lead := !c.leading
	c.leading = true
	c.mu.Unlock()
	if lead {
		c.commitQueue()
	}
	for {
		select {
		case err := <-w.err:
			return err
		case <-w.lead:
			c.commitQueue()
		}
	}
}

// Commits is how many transactions the committer has committed or tried.
func (c *Committer) Commits() uint64 { return c.commits.Load() }

// commitQueue commits the queued writes together, then hands the lead to
// the first write queued meanwhile (or gives it up).
func (c *Committer) commitQueue() {
	c.mu.Lock()
	group := c.queue
	c.queue = nil
	c.mu.Unlock()
	c.commit(group)
	c.mu.Lock()
	if len(c.queue) == 0 {
		c.leading = false
	} else {
		c.queue[0].lead <- struct{}{}
	}
	c.mu.Unlock()
}

// commit runs group in one transaction; when it fails, each write again
// alone.
func (c *Committer) commit(group []*write) {
	c.commits.Add(1)
	err := c.db.Update(func(tx *bolt.Tx) error {
		for _, w := range group {
			if err := w.fn(tx); err != nil {
				return err
			}
		}
		return nil
	})
	if err == nil || len(group) == 1 {
		for _, w := range group {
			w.err <- err
		}
		return
	}
	for _, w := range group {
		c.commits.Add(1)
		w.err <- c.db.Update(w.fn)
	}
}
