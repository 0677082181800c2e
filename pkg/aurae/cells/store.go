package cells

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"
)

// store persists cells and executables in a bbolt file, so that a restarted
// auraed knows what it ran.
//
// Every commit is fsynced: a crash of auraed alone would be survived by the
// page cache, but a power loss or kernel crash with unsynced commits can tear
// the file (meta pages pointing at pages never written). The cgroups and
// processes the file describes die with the kernel; recovery drops records
// whose cgroup is gone.
type store struct {
	db *bolt.DB
}

var (
	bucketCells = []byte("cells")
	bucketExecs = []byte("executables")
)

type cellRecord struct {
	// Spec is the Cell as allocated, in protojson.
	Spec      json.RawMessage `json:"spec"`
	InitPid   int             `json:"init_pid,omitempty"`
	InitStart uint64          `json:"init_start,omitempty"`
	CreatedAt time.Time       `json:"created_at"`
}

type execRecord struct {
	Seq         uint64 `json:"seq"`
	Name        string `json:"name"`
	Command     string `json:"command"`
	Description string `json:"description,omitempty"`
	Pid         int    `json:"pid"`
	PidStart    uint64 `json:"pid_start"`
	State       int32  `json:"state"`
	ExitCode    int32  `json:"exit_code"`
	Signal      int32  `json:"signal"`
	StartedAt   int64  `json:"started_at"`
	ExitedAt    int64  `json:"exited_at,omitempty"`
}

func openStore(dir string) (*store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	db, err := bolt.Open(filepath.Join(dir, "cells.db"), 0o600, &bolt.Options{Timeout: 2 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("open state %s: %w", dir, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketCells, bucketExecs} {
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
	return &store{db: db}, nil
}

func (s *store) close() error { return s.db.Close() }

func execKey(cell, name string) []byte { return []byte(cell + "\x00" + name) }

func (s *store) putCell(name string, r cellRecord) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketCells).Put([]byte(name), b) })
}

// deleteCell removes a cell and its executables.
func (s *store) deleteCell(name string) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		if err := tx.Bucket(bucketCells).Delete([]byte(name)); err != nil {
			return err
		}
		c := tx.Bucket(bucketExecs).Cursor()
		prefix := []byte(name + "\x00")
		for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Seek(prefix) {
			if err := c.Delete(); err != nil {
				return err
			}
		}
		return nil
	})
}

func (s *store) putExec(cell string, r execRecord) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketExecs).Put(execKey(cell, r.Name), b) })
}

// load returns every cell record, and the executables by cell.
func (s *store) load() (map[string]cellRecord, map[string][]execRecord, error) {
	cells := map[string]cellRecord{}
	execs := map[string][]execRecord{}
	err := s.db.View(func(tx *bolt.Tx) error {
		err := tx.Bucket(bucketCells).ForEach(func(k, v []byte) error {
			var r cellRecord
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("cell %q: %w", k, err)
			}
			cells[string(k)] = r
			return nil
		})
		if err != nil {
			return err
		}
		return tx.Bucket(bucketExecs).ForEach(func(k, v []byte) error {
			cell, _, _ := bytes.Cut(k, []byte{0})
			var r execRecord
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("executable %q: %w", k, err)
			}
			execs[string(cell)] = append(execs[string(cell)], r)
			return nil
		})
	})
	return cells, execs, err
}
