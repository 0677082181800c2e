package vms

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/encoding/protojson"

	vmsv0 "github.com/aurae-runtime/aurae-cri/api/vms/v0"
)

// store persists VMs in a bbolt file, so that a restarted auraed knows what
// it ran. Every commit is fsynced, as in the other stores of auraed: without
// it a power loss or kernel crash can leave the file torn (bbolt's meta pages
// pointing at pages never written), not merely a few writes short, and the
// daemon would not start again. Recovery then marks the VMs stopped.
type store struct {
	db *bolt.DB
}

var bucketVMs = []byte("vms")

type record struct {
	Spec   *vmsv0.VirtualMachine
	Status vmStatus
}

type recordJSON struct {
	Spec   json.RawMessage `json:"spec"`
	Status vmStatus        `json:"status"`
}

func openStore(dir string) (*store, error) {
	db, err := bolt.Open(filepath.Join(dir, "vms.db"), 0o600, &bolt.Options{Timeout: 2 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("open state %s: %w", dir, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(bucketVMs)
		return err
	})
	if err != nil {
		_ = db.Close()
		return nil, err
	}
	return &store{db: db}, nil
}

func (s *store) close() error { return s.db.Close() }

func (s *store) put(id string, r record) error {
	spec, err := protojson.Marshal(r.Spec)
	if err != nil {
		return err
	}
	b, err := json.Marshal(recordJSON{Spec: spec, Status: r.Status})
	if err != nil {
		return err
	}
	return s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketVMs).Put([]byte(id), b) })
}

func (s *store) delete(id string) error {
	return s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketVMs).Delete([]byte(id)) })
}

// load returns every record; unreadable ones are returned in bad.
func (s *store) load() (recs map[string]record, bad map[string]error, err error) {
	recs, bad = map[string]record{}, map[string]error{}
	err = s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketVMs).ForEach(func(k, v []byte) error {
			var rj recordJSON
			if err := json.Unmarshal(v, &rj); err != nil {
				bad[string(k)] = err
				return nil
			}
			spec := &vmsv0.VirtualMachine{}
			if err := protojson.Unmarshal(rj.Spec, spec); err != nil {
				bad[string(k)] = err
				return nil
			}
			recs[string(k)] = record{Spec: spec, Status: rj.Status}
			return nil
		})
	})
	return recs, bad, err
}
