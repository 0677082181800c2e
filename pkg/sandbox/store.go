package sandbox

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Store holds every pod and container in memory and writes each change
// through to a bbolt file. Neither of its locks is ever held across a call
// to auraed, containerd or CNI.
//
// Every commit is fsynced: an object the kubelet was told about must be
// there after a power loss, and an unsynced bbolt file can be torn by one.
// A file that cannot be read is moved aside (see Open).
//
// Reads never wait for a commit: changes are serialized by wmu, held
// across the commit (bbolt's fsync, the on-disk record's), while mu, which
// readers share, is taken by a change only to swap in what it committed.
// A change reads the maps under wmu alone (no one else changes them).
type Store struct {
	db *bolt.DB
	// dir is the store's directory: the file and the on-disk records.
	dir string
	// movedAside is where an unreadable file was moved at Open ("" when
	// the file was read).
	movedAside string
	// fresh: Open made the file (it was missing, or moved aside).
	fresh bool

	// noSync: commits and records are not fsynced (tests only, see
	// Options.NoSync).
	noSync bool

	// wmu serializes the changes; lock order: wmu, then mu.
	wmu sync.Mutex
	// mu guards the maps below.
	mu         sync.RWMutex
	sandboxes  map[string]*Sandbox
	containers map[string]*Container
	intents    map[string]*Intent
	// names maps a reserved name to the id holding it.
	names map[string]string

	// lazy counts the deletions DeleteRemovedContainer left to write;
	// Close waits for them.
	lazy sync.WaitGroup
}

var (
	bucketSandboxes  = []byte("sandboxes")
	bucketContainers = []byte("containers")
)

// record is how an object is kept on disk: the struct as JSON, its CRI
// config as protojson.
type record struct {
	Object json.RawMessage `json:"object"`
	Config json.RawMessage `json:"config"`
}

// dbFile is the store's file under its directory.
const dbFile = "cri.db"

// Open opens (or creates) the store under dir and loads what it holds.
//
// A file that bbolt cannot open (torn, not a bbolt file, a newer version)
// or whose records cannot be read is renamed to cri.db.corrupt-<time> and
// an empty store is started in its place, with an error log saying so: the
// daemon must come back, and recovery rebuilds the store from the on-disk
// records (Fresh and MovedAside tell it; see records.go). A file locked by another process is
// an error: another aurae-cri is using it.
func Open(dir string) (*Store, error) { return OpenWith(dir, Options{}) }

// Options are how a store is opened.
type Options struct {
	// NoSync commits without fsync (bbolt's NoSync) and writes the on-disk
	// records without fsync: a power loss can lose or tear the state.
	// Only for measuring what the fsyncs cost; never in production.
	NoSync bool
}

// OpenWith is Open with opts.
func OpenWith(dir string, opts Options) (*Store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if err := makeRecordDirs(dir); err != nil {
		return nil, fmt.Errorf("records: %w", err)
	}
	path := filepath.Join(dir, dbFile)
	_, serr := os.Stat(path)
	missing := errors.Is(serr, fs.ErrNotExist)
	s, err := openFile(path, opts)
	if err == nil {
		s.fresh = missing
		return s, nil
	}
	if !unreadable(err) {
		return nil, err
	}
	aside := fmt.Sprintf("%s.corrupt-%s", path, time.Now().UTC().Format("20060102T150405.000000000Z"))
	if rerr := os.Rename(path, aside); rerr != nil {
		return nil, fmt.Errorf("%w (and moving it aside failed: %w)", err, rerr)
	}
	slog.Error("state file unreadable: moved aside, starting with an empty store; recovery rebuilds it from the on-disk records",
		"file", path, "moved_to", aside, "error", err)
	s, err = openFile(path, opts)
	if err != nil {
		return nil, err
	}
	s.movedAside, s.fresh = aside, true
	return s, nil
}

// MovedAside is where Open moved an unreadable state file ("" when it read
// the file): the store started empty and knows nothing of what ran.
func (s *Store) MovedAside() string { return s.movedAside }

// Fresh tells that Open made the state file: it was missing, or
// unreadable and moved aside (MovedAside). The store started empty;
// recovery rebuilds it from the on-disk records (ReadRecords).
func (s *Store) Fresh() bool { return s.fresh }

// errUnreadable marks a file bbolt opened but whose content is unusable.
var errUnreadable = errors.New("unreadable state file")

// unreadable tells a damaged file (to move aside) from a file that is
// locked by another process or could not be reached (to report).
func unreadable(err error) bool {
	if errors.Is(err, errUnreadable) {
		return true
	}
	if errors.Is(err, berrors.ErrTimeout) {
		return false
	}
	var pe *fs.PathError
	var errno syscall.Errno
	return !errors.As(err, &pe) && !errors.As(err, &errno)
}

// openFile opens path and loads it; a panic of bbolt on a damaged page is
// an error.
func openFile(path string, opts Options) (s *Store, err error) {
	var db *bolt.DB
	defer func() {
		if p := recover(); p != nil {
			if db != nil {
				_ = db.Close()
			}
			s, err = nil, fmt.Errorf("open %s: %w: bbolt: %v", path, errUnreadable, p)
		}
	}()
	db, err = bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second, NoSync: opts.NoSync})
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	s = &Store{db: db, dir: filepath.Dir(path), noSync: opts.NoSync, sandboxes: map[string]*Sandbox{}, containers: map[string]*Container{},
		intents: map[string]*Intent{}, names: map[string]string{}}
	if err := s.load(); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("load %s: %w: %w", path, errUnreadable, err)
	}
	return s, nil
}

// Close waits for the deletions still being written, then closes the
// file.
func (s *Store) Close() error {
	s.Flush()
	return s.db.Close()
}

// Flush waits for the deletions DeleteRemovedContainer left to write.
func (s *Store) Flush() { s.lazy.Wait() }

func (s *Store) load() error {
	return s.db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketSandboxes, bucketContainers, bucketIntents} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		// Check reads every page; it must be drained to its end.
		var damaged error
		for err := range tx.Check() {
			damaged = cmp.Or(damaged, err)
		}
		if damaged != nil {
			return fmt.Errorf("check: %w", damaged)
		}
		if err := s.loadIntents(tx); err != nil {
			return err
		}
		err := tx.Bucket(bucketSandboxes).ForEach(func(k, v []byte) error {
			var r record
			sb := &Sandbox{Config: &runtimeapi.PodSandboxConfig{}}
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("sandbox %s: %w", k, err)
			}
			if err := json.Unmarshal(r.Object, sb); err != nil {
				return fmt.Errorf("sandbox %s: %w", k, err)
			}
			if err := protojson.Unmarshal(r.Config, sb.Config); err != nil {
				return fmt.Errorf("sandbox %s config: %w", k, err)
			}
			s.sandboxes[sb.ID] = sb
			s.names[sb.Name] = sb.ID
			return nil
		})
		if err != nil {
			return err
		}
		return tx.Bucket(bucketContainers).ForEach(func(k, v []byte) error {
			var r record
			c := &Container{Config: &runtimeapi.ContainerConfig{}}
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("container %s: %w", k, err)
			}
			if err := json.Unmarshal(r.Object, c); err != nil {
				return fmt.Errorf("container %s: %w", k, err)
			}
			if err := protojson.Unmarshal(r.Config, c.Config); err != nil {
				return fmt.Errorf("container %s config: %w", k, err)
			}
			s.containers[c.ID] = c
			s.names[c.Name] = c.ID
			return nil
		})
	})
}

func (s *Store) put(bucket []byte, id string, obj any, cfg []byte) error {
	return s.putDone(bucket, id, obj, cfg, false)
}

// putDone puts a record and, when done, deletes the intent of the same id
// in the same transaction: the object is made.
func (s *Store) putDone(bucket []byte, id string, obj any, cfg []byte, done bool) error {
	o, err := json.Marshal(obj)
	if err != nil {
		return err
	}
	b, err := json.Marshal(record{Object: o, Config: cfg})
	if err != nil {
		return err
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		if done {
			if err := tx.Bucket(bucketIntents).Delete([]byte(id)); err != nil {
				return err
			}
		}
		return tx.Bucket(bucket).Put([]byte(id), b)
	})
}

func (s *Store) del(bucket []byte, id string) error {
	return s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucket).Delete([]byte(id)) })
}

// change starts a change: it takes the writers' lock, and returns its
// release.
func (s *Store) change() func() {
	s.wmu.Lock()
	return s.wmu.Unlock
}

// apply makes f's changes to the maps visible to readers: a change calls
// it after its commit, with the writers' lock held.
func (s *Store) apply(f func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f()
}

// ReserveName reserves name for id. A name held by another id is refused
// with AlreadyExists naming the holder; reserving it again for the same id
// succeeds.
func (s *Store) ReserveName(name, id string) error {
	defer s.change()()
	if holder, ok := s.names[name]; ok && holder != id {
		return fmt.Errorf("name %q is reserved for %q: %w", name, holder, errdefs.ErrAlreadyExists)
	}
	s.apply(func() { s.names[name] = id })
	return nil
}

// NameHolder returns the id holding name.
func (s *Store) NameHolder(name string) (string, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	id, ok := s.names[name]
	return id, ok
}

// ReleaseName frees a name reserved for id.
func (s *Store) ReleaseName(name, id string) {
	defer s.change()()
	if s.names[name] == id {
		s.apply(func() { delete(s.names, name) })
	}
}

// AddSandbox stores a new pod, and completes its intent in the same
// transaction; its name must be reserved for it.
func (s *Store) AddSandbox(sb *Sandbox) error {
	cfg, err := protojson.Marshal(sb.Config)
	if err != nil {
		return err
	}
	defer s.change()()
	if _, ok := s.sandboxes[sb.ID]; ok {
		return fmt.Errorf("sandbox %q: %w", sb.ID, errdefs.ErrAlreadyExists)
	}
	// The record first: an object the file holds always has one.
	if err := s.writeRecord(recordSandbox, sb.ID, sb, cfg); err != nil {
		return err
	}
	if err := s.putDone(bucketSandboxes, sb.ID, sb, cfg, true); err != nil {
		s.dropRecord(recordSandbox, sb.ID)
		return fmt.Errorf("persist sandbox %q: %w", sb.ID, err)
	}
	s.apply(func() {
		s.sandboxes[sb.ID] = sb
		delete(s.intents, sb.ID)
	})
	return nil
}

// AddContainer stores a new container, and completes its intent in the
// same transaction; its name must be reserved for it.
func (s *Store) AddContainer(c *Container) error {
	cfg, err := protojson.Marshal(c.Config)
	if err != nil {
		return err
	}
	defer s.change()()
	if _, ok := s.containers[c.ID]; ok {
		return fmt.Errorf("container %q: %w", c.ID, errdefs.ErrAlreadyExists)
	}
	// The record first: an object the file holds always has one.
	if err := s.writeRecord(recordContainer, c.ID, c, cfg); err != nil {
		return err
	}
	if err := s.putDone(bucketContainers, c.ID, c, cfg, true); err != nil {
		s.dropRecord(recordContainer, c.ID)
		return fmt.Errorf("persist container %q: %w", c.ID, err)
	}
	s.apply(func() {
		s.containers[c.ID] = c
		delete(s.intents, c.ID)
	})
	return nil
}

// resolve finds the full id for an id or a unique prefix of one.
func resolve[T any](m map[string]T, id, kind string) (string, error) {
	if id == "" {
		return "", fmt.Errorf("%s id is empty: %w", kind, errdefs.ErrInvalidArgument)
	}
	if _, ok := m[id]; ok {
		return id, nil
	}
	var found string
	for full := range m {
		if strings.HasPrefix(full, id) {
			if found != "" {
				return "", fmt.Errorf("%s id prefix %q is ambiguous: %w", kind, id, errdefs.ErrInvalidArgument)
			}
			found = full
		}
	}
	if found == "" {
		return "", fmt.Errorf("%s %q: %w", kind, id, errdefs.ErrNotFound)
	}
	return found, nil
}

// Sandbox returns a copy of the pod with id (or a unique prefix of it).
func (s *Store) Sandbox(id string) (Sandbox, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	full, err := resolve(s.sandboxes, id, "sandbox")
	if err != nil {
		return Sandbox{}, err
	}
	return *s.sandboxes[full], nil
}

// Container returns a copy of the container with id (or a unique prefix).
func (s *Store) Container(id string) (Container, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	full, err := resolve(s.containers, id, "container")
	if err != nil {
		return Container{}, err
	}
	return *s.containers[full], nil
}

// Sandboxes returns copies of every pod, oldest first.
func (s *Store) Sandboxes() []Sandbox {
	s.mu.RLock()
	copies := copyValues(s.sandboxes)
	s.mu.RUnlock()
	return oldestFirst(copies, func(sb *Sandbox) time.Time { return sb.CreatedAt })
}

// Containers returns copies of every container, oldest first.
func (s *Store) Containers() []Container {
	s.mu.RLock()
	copies := copyValues(s.containers)
	s.mu.RUnlock()
	return oldestFirst(copies, func(c *Container) time.Time { return c.CreatedAt })
}

// copyValues copies the values of m (under the readers' lock).
func copyValues[T any](m map[string]*T) []T {
	out := make([]T, 0, len(m))
	for _, v := range m {
		out = append(out, *v)
	}
	return out
}

// oldestFirst returns copies ordered by created. It sorts pointers, not
// the values: sorting the structs themselves moved each many times over
// (with write barriers), most of the time a List took with 110 pods.
func oldestFirst[T any](copies []T, created func(*T) time.Time) []T {
	ptrs := make([]*T, len(copies))
	for i := range copies {
		ptrs[i] = &copies[i]
	}
	slices.SortFunc(ptrs, func(a, b *T) int { return created(a).Compare(created(b)) })
	out := make([]T, len(ptrs))
	for i, p := range ptrs {
		out[i] = *p
	}
	return out
}

// ContainersOf returns copies of the containers of a pod.
func (s *Store) ContainersOf(sandboxID string) []Container {
	var out []Container
	for _, c := range s.Containers() {
		if c.SandboxID == sandboxID {
			out = append(out, c)
		}
	}
	return out
}

// UpdateSandbox changes a pod's status in one transaction: f gets the
// current status and returns the new one; an error from f changes nothing.
func (s *Store) UpdateSandbox(id string, f func(SandboxStatus) (SandboxStatus, error)) (Sandbox, error) {
	defer s.change()()
	full, err := resolve(s.sandboxes, id, "sandbox")
	if err != nil {
		return Sandbox{}, err
	}
	sb := *s.sandboxes[full]
	st, err := f(sb.Status)
	if err != nil {
		return sb, err
	}
	if err := checkSandboxTransition(sb.ID, sb.Status, st); err != nil {
		return sb, err
	}
	sb.Status = st
	cfg, err := protojson.Marshal(sb.Config)
	if err != nil {
		return sb, err
	}
	old := s.sandboxes[full]
	rewrite := old.Status.State != st.State || old.Status.NetworkUp != st.NetworkUp
	if err := s.commitRewriting(rewrite, recordSandbox, sb.ID, &sb, old, cfg, func() error {
		return s.put(bucketSandboxes, sb.ID, &sb, cfg)
	}); err != nil {
		return sb, fmt.Errorf("persist sandbox %q: %w", sb.ID, err)
	}
	s.apply(func() { s.sandboxes[full] = &sb })
	return sb, nil
}

// commitRewriting runs commit and, when rewrite is set, rewrites the
// object's record at the same time (each waits for its own fsyncs: the
// two together cost about one of them, not their sum). A record is the
// copy that survives a lost bbolt file: a crash between the two leaves it
// a state ahead of the store (or behind, as a crash after the commit did
// before); it is read only when the bbolt file is lost, and recovery then
// asks the controller what runs whatever the state says. A failed commit
// puts the old record back.
func (s *Store) commitRewriting(rewrite bool, k recordKind, id string, obj, old any, cfg []byte, commit func() error) error {
	if !rewrite {
		return commit()
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.rewriteRecord(k, id, obj, cfg)
	}()
	err := commit()
	<-done
	if err != nil {
		s.rewriteRecord(k, id, old, cfg)
	}
	return err
}

// UpdateContainer changes a container's status in one transaction.
func (s *Store) UpdateContainer(id string, f func(ContainerStatus) (ContainerStatus, error)) (Container, error) {
	defer s.change()()
	full, err := resolve(s.containers, id, "container")
	if err != nil {
		return Container{}, err
	}
	c := *s.containers[full]
	st, err := f(c.Status)
	if err != nil {
		return c, err
	}
	if err := checkContainerTransition(c.ID, c.Status, st); err != nil {
		return c, err
	}
	c.Status = st
	cfg, err := protojson.Marshal(c.Config)
	if err != nil {
		return c, err
	}
	old := s.containers[full]
	if err := s.commitRewriting(old.Status.State != st.State, recordContainer, c.ID, &c, old, cfg, func() error {
		return s.put(bucketContainers, c.ID, &c, cfg)
	}); err != nil {
		return c, fmt.Errorf("persist container %q: %w", c.ID, err)
	}
	s.apply(func() { s.containers[full] = &c })
	return c, nil
}

// DeleteSandbox forgets a pod and releases its name.
func (s *Store) DeleteSandbox(id string) error {
	defer s.change()()
	sb, ok := s.sandboxes[id]
	if !ok {
		return nil
	}
	if err := s.del(bucketSandboxes, id); err != nil {
		return err
	}
	s.dropRecord(recordSandbox, id)
	s.apply(func() {
		delete(s.sandboxes, id)
		if s.names[sb.Name] == id {
			delete(s.names, sb.Name)
		}
	})
	return nil
}

// DeleteContainer forgets a container and releases its name.
func (s *Store) DeleteContainer(id string) error {
	defer s.change()()
	return s.deleteContainer(id, false, nil)
}

// DeleteRemovedContainer forgets a container whose removal is recorded
// (Status.Removing) and done but for last (nil for nothing): it is gone
// from the maps (and its name free) when it returns; last runs off the
// caller's path, and when it succeeds the container goes from the file and
// the on-disk records (Flush and Close wait for both). A crash before, or
// a failed last, leaves the REMOVING record, whose removal recovery
// finishes again: every step of a removal is done or tolerates being done.
// A container not marked Removing is deleted as DeleteContainer does,
// after last.
func (s *Store) DeleteRemovedContainer(id string, last func() error) error {
	defer s.change()()
	return s.deleteContainer(id, true, last)
}

// deleteContainer is DeleteContainer (DeleteRemovedContainer with lazy),
// under wmu.
func (s *Store) deleteContainer(id string, lazy bool, last func() error) error {
	c, ok := s.containers[id]
	if !ok {
		return nil
	}
	del := func() error {
		if err := s.del(bucketContainers, id); err != nil {
			return err
		}
		s.dropRecord(recordContainer, id)
		return nil
	}
	if lazy && c.Status.Removing {
		s.lazy.Add(1)
		go func() {
			defer s.lazy.Done()
			if last != nil {
				if err := last(); err != nil {
					slog.Warn("removed container's record left: its removal is finished at the next start", "container", id, "error", err)
					return
				}
			}
			if err := del(); err != nil {
				slog.Warn("removed container's record left: its removal is finished at the next start", "container", id, "error", err)
			}
		}()
	} else {
		if last != nil {
			if err := last(); err != nil {
				return err
			}
		}
		if err := del(); err != nil {
			return err
		}
	}
	s.apply(func() {
		delete(s.containers, id)
		if s.names[c.Name] == id {
			delete(s.names, c.Name)
		}
	})
	return nil
}

// UpdateSpec replaces a container's OCI spec and the resources of its CRI
// config, after UpdateContainerResources.
func (s *Store) UpdateSpec(id string, spec []byte, resources *runtimeapi.LinuxContainerResources) error {
	defer s.change()()
	full, err := resolve(s.containers, id, "container")
	if err != nil {
		return err
	}
	c := *s.containers[full]
	c.Spec = spec
	cfg := proto.Clone(c.Config).(*runtimeapi.ContainerConfig)
	if cfg.Linux == nil {
		cfg.Linux = &runtimeapi.LinuxContainerConfig{}
	}
	cfg.Linux.Resources = resources
	c.Config = cfg
	b, err := protojson.Marshal(cfg)
	if err != nil {
		return err
	}
	if err := s.put(bucketContainers, c.ID, &c, b); err != nil {
		return fmt.Errorf("persist container %q: %w", c.ID, err)
	}
	s.rewriteRecord(recordContainer, c.ID, &c, b)
	s.apply(func() { s.containers[full] = &c })
	return nil
}
