package sandbox

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/encoding/protojson"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/internal/durable"
)

// On-disk records: besides the bbolt file, every pod and container has a
// file of its own under <dir>/records/{pods,containers}/<id>.json, 0600,
// written (temp file, fsync, rename, fsync of the directory) before the
// commit that stores the object, rewritten when its state changes, and
// removed after the commit that forgets it. They are what survives an
// unreadable (or missing) bbolt file: recovery then rebuilds the store
// from them (ReadRecords, RestoreSandbox, RestoreContainer), as CRI-O
// rebuilds its state from its per-container files. At a normal start,
// SyncRecords makes them match the store again (a crash between a commit
// and its record, or a store older than the records).
//
// The directory is the store's alone: the container's rootfs directory
// (<RootDir>/containers/<id>) is removed early in a removal, and its
// record must outlive it.

const (
	recordsDir = "records"
	// recordVersion is the version of the record format.
	recordVersion = 1
	// maxRecordSize bounds one record file (a pod's labels and
	// annotations are at most 256 KiB; a container's spec and config
	// some more).
	maxRecordSize = 16 << 20
)

// recordKind is what a record holds, and the directory it lives in.
type recordKind string

const (
	recordSandbox   recordKind = "sandbox"
	recordContainer recordKind = "container"
)

func (k recordKind) dir() string {
	if k == recordSandbox {
		return "pods"
	}
	return "containers"
}

// diskRecord is a record file: the object as JSON and its CRI config as
// protojson, as in the bbolt file, with its kind and format version.
type diskRecord struct {
	Version int             `json:"version"`
	Kind    recordKind      `json:"kind"`
	Object  json.RawMessage `json:"object"`
	Config  json.RawMessage `json:"config"`
}

// RefusedRecord is a record file that could not be used, and why.
type RefusedRecord struct {
	Path string
	Err  error
}

// Records are the objects read from the on-disk records, and the files
// refused.
type Records struct {
	Sandboxes  []Sandbox
	Containers []Container
	Refused    []RefusedRecord
}

// ValidID tells an id as aurae-cri makes them (64 hex digits) from
// anything else: paths are built from the ids read back.
func ValidID(id string) bool {
	if len(id) != 64 {
		return false
	}
	_, err := hex.DecodeString(id)
	return err == nil
}

// safeName tells whether id can name a file in a records directory (the
// store takes any id; only ValidID ones are read back).
func safeName(id string) bool {
	return id != "" && id == filepath.Base(id) && id[0] != '.' && !strings.ContainsRune(id, 0)
}

// makeRecordDirs makes the records directories, 0700; one that is a
// symlink (or not a directory) is an error.
func makeRecordDirs(dir string) error {
	root := filepath.Join(dir, recordsDir)
	for _, d := range []string{root, filepath.Join(root, recordSandbox.dir()), filepath.Join(root, recordContainer.dir())} {
		if err := os.Mkdir(d, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
			return err
		}
		if fi, err := os.Lstat(d); err != nil {
			return err
		} else if !fi.IsDir() {
			return fmt.Errorf("%s is not a directory (%s)", d, fi.Mode().Type())
		}
	}
	if err := durable.SyncDir(root); err != nil {
		return err
	}
	return durable.SyncDir(dir)
}

func (s *Store) recordPath(k recordKind, id string) string {
	return filepath.Join(s.dir, recordsDir, k.dir(), id+".json")
}

// writeRecord writes the record of an object atomically and durably.
func (s *Store) writeRecord(k recordKind, id string, obj any, cfg []byte) error {
	if !safeName(id) {
		return fmt.Errorf("%s id %q cannot name a record: %w", k, id, errdefs.ErrInvalidArgument)
	}
	o, err := json.Marshal(obj)
	if err != nil {
		return err
	}
	b, err := json.Marshal(diskRecord{Version: recordVersion, Kind: k, Object: o, Config: cfg})
	if err != nil {
		return err
	}
	path := s.recordPath(k, id)
	dir := filepath.Dir(path)
	tmp := filepath.Join(dir, "."+id+".tmp")
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("record of %s %s: %w", k, id, err)
	}
	_, err = f.Write(b)
	if err == nil && !s.noSync {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("record of %s %s: %w", k, id, err)
	}
	if err := s.syncDir(dir); err != nil {
		return fmt.Errorf("record of %s %s: %w", k, id, err)
	}
	return nil
}

// removeRecord removes the record of an object, if any.
func (s *Store) removeRecord(k recordKind, id string) error {
	if !safeName(id) {
		return nil
	}
	path := s.recordPath(k, id)
	if err := os.Remove(path); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("remove record of %s %s: %w", k, id, err)
	}
	return s.syncDir(filepath.Dir(path))
}

// dropRecord removes a record after the commit that forgot its object:
// a failure leaves a stale record, which SyncRecords removes at the next
// start, so it is logged, not returned.
func (s *Store) dropRecord(k recordKind, id string) {
	if err := s.removeRecord(k, id); err != nil {
		slog.Warn("on-disk record left: removed at the next start", string(k), id, "error", err)
	}
}

// rewriteRecord rewrites a record after a commit that changed its
// object's state; a failure leaves the previous record (the object is
// still named by it) and is logged.
func (s *Store) rewriteRecord(k recordKind, id string, obj any, cfg []byte) {
	if err := s.writeRecord(k, id, obj, cfg); err != nil {
		slog.Warn("on-disk record not updated: it keeps the previous state", string(k), id, "error", err)
	}
}

// syncDir fsyncs dir, unless the store is opened with NoSync.
func (s *Store) syncDir(dir string) error {
	if s.noSync {
		return nil
	}
	return durable.SyncDir(dir)
}

// ReadRecords reads every on-disk record. A record that is not a regular
// file, is too big, cannot be decoded, or whose name, id, pod id, kind or
// state is not one aurae-cri writes is refused (in Refused), never used.
// Temporary files of a write cut short are skipped.
func (s *Store) ReadRecords() (Records, error) {
	var out Records
	for _, k := range []recordKind{recordSandbox, recordContainer} {
		dir := filepath.Join(s.dir, recordsDir, k.dir())
		entries, err := os.ReadDir(dir)
		if err != nil {
			return Records{}, fmt.Errorf("read records: %w", err)
		}
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), ".") {
				continue
			}
			path := filepath.Join(dir, e.Name())
			id, ok := strings.CutSuffix(e.Name(), ".json")
			if !ok || !ValidID(id) {
				out.Refused = append(out.Refused, RefusedRecord{path, errors.New("not named <id>.json")})
				continue
			}
			if !e.Type().IsRegular() {
				out.Refused = append(out.Refused, RefusedRecord{path, fmt.Errorf("not a regular file (%s)", e.Type())})
				continue
			}
			r, err := readRecord(path, k)
			if err != nil {
				out.Refused = append(out.Refused, RefusedRecord{path, err})
				continue
			}
			switch k {
			case recordSandbox:
				sb, err := decodeSandbox(r, id)
				if err != nil {
					out.Refused = append(out.Refused, RefusedRecord{path, err})
					continue
				}
				out.Sandboxes = append(out.Sandboxes, sb)
			case recordContainer:
				c, err := decodeContainer(r, id)
				if err != nil {
					out.Refused = append(out.Refused, RefusedRecord{path, err})
					continue
				}
				out.Containers = append(out.Containers, c)
			}
		}
	}
	return out, nil
}

// readRecord reads one record file without following a symlink nor
// blocking on a FIFO, and checks its format and kind.
func readRecord(path string, k recordKind) (diskRecord, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return diskRecord{}, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return diskRecord{}, err
	}
	if !fi.Mode().IsRegular() {
		return diskRecord{}, fmt.Errorf("not a regular file (%s)", fi.Mode().Type())
	}
	if fi.Size() > maxRecordSize {
		return diskRecord{}, fmt.Errorf("%d bytes, more than %d", fi.Size(), maxRecordSize)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxRecordSize+1))
	if err != nil {
		return diskRecord{}, err
	}
	if len(b) > maxRecordSize {
		return diskRecord{}, fmt.Errorf("more than %d bytes", maxRecordSize)
	}
	var r diskRecord
	if err := json.Unmarshal(b, &r); err != nil {
		return diskRecord{}, err
	}
	if r.Version != recordVersion || r.Kind != k {
		return diskRecord{}, fmt.Errorf("a record of version %d and kind %q, want %d and %q", r.Version, r.Kind, recordVersion, k)
	}
	return r, nil
}

func decodeSandbox(r diskRecord, id string) (Sandbox, error) {
	sb := Sandbox{Config: &runtimeapi.PodSandboxConfig{}}
	if err := json.Unmarshal(r.Object, &sb); err != nil {
		return Sandbox{}, err
	}
	if err := protojson.Unmarshal(r.Config, sb.Config); err != nil {
		return Sandbox{}, fmt.Errorf("config: %w", err)
	}
	switch {
	case sb.ID != id:
		return Sandbox{}, fmt.Errorf("holds pod %q", sb.ID)
	case sb.Name == "":
		return Sandbox{}, errors.New("a pod without a name")
	case sb.Status.State != runtimeapi.PodSandboxState_SANDBOX_READY && sb.Status.State != runtimeapi.PodSandboxState_SANDBOX_NOTREADY:
		return Sandbox{}, fmt.Errorf("pod state %d", sb.Status.State)
	}
	return sb, nil
}

func decodeContainer(r diskRecord, id string) (Container, error) {
	c := Container{Config: &runtimeapi.ContainerConfig{}}
	if err := json.Unmarshal(r.Object, &c); err != nil {
		return Container{}, err
	}
	if err := protojson.Unmarshal(r.Config, c.Config); err != nil {
		return Container{}, fmt.Errorf("config: %w", err)
	}
	switch {
	case c.ID != id:
		return Container{}, fmt.Errorf("holds container %q", c.ID)
	case !ValidID(c.SandboxID):
		return Container{}, fmt.Errorf("pod id %q", c.SandboxID)
	case c.Name == "":
		return Container{}, errors.New("a container without a name")
	case containerNext[c.Status.State] == nil:
		return Container{}, fmt.Errorf("container state %d", c.Status.State)
	case !json.Valid(c.Spec):
		return Container{}, errors.New("its OCI spec is not JSON")
	}
	return c, nil
}

// RestoreSandbox stores a pod rebuilt from its on-disk record, with its
// name; an id or name the store holds already is AlreadyExists.
func (s *Store) RestoreSandbox(sb Sandbox) error {
	cfg, err := protojson.Marshal(sb.Config)
	if err != nil {
		return err
	}
	defer s.change()()
	if err := s.restorable(sb.ID, sb.Name); err != nil {
		return err
	}
	if _, ok := s.sandboxes[sb.ID]; ok {
		return fmt.Errorf("sandbox %q: %w", sb.ID, errdefs.ErrAlreadyExists)
	}
	if err := s.put(bucketSandboxes, sb.ID, &sb, cfg); err != nil {
		return fmt.Errorf("persist sandbox %q: %w", sb.ID, err)
	}
	s.apply(func() {
		s.sandboxes[sb.ID] = &sb
		s.names[sb.Name] = sb.ID
	})
	return nil
}

// RestoreContainer stores a container rebuilt from its on-disk record,
// with its name; its pod must be stored.
func (s *Store) RestoreContainer(c Container) error {
	cfg, err := protojson.Marshal(c.Config)
	if err != nil {
		return err
	}
	defer s.change()()
	if err := s.restorable(c.ID, c.Name); err != nil {
		return err
	}
	if _, ok := s.sandboxes[c.SandboxID]; !ok {
		return fmt.Errorf("pod %q of container %q: %w", c.SandboxID, c.ID, errdefs.ErrNotFound)
	}
	if err := s.put(bucketContainers, c.ID, &c, cfg); err != nil {
		return fmt.Errorf("persist container %q: %w", c.ID, err)
	}
	s.apply(func() {
		s.containers[c.ID] = &c
		s.names[c.Name] = c.ID
	})
	return nil
}

// restorable refuses an id or a name the store holds already.
func (s *Store) restorable(id, name string) error {
	_, pod := s.sandboxes[id]
	_, ctr := s.containers[id]
	if pod || ctr {
		return fmt.Errorf("id %q: %w", id, errdefs.ErrAlreadyExists)
	}
	if holder, ok := s.names[name]; ok && holder != id {
		return fmt.Errorf("name %q is held by %q: %w", name, holder, errdefs.ErrAlreadyExists)
	}
	return nil
}

// SyncRecords makes the on-disk records match a store read from its
// file: a stored object without a record gets one (a store older than
// the records), a record of an object the store holds neither as an
// object nor as an intent is removed (a crash between a commit and its
// record, or a record refused earlier), and so is the temporary file of
// a write cut short. It returns the paths written and removed.
func (s *Store) SyncRecords() (written, removed []string, err error) {
	defer s.change()()
	for _, k := range []recordKind{recordSandbox, recordContainer} {
		dir := filepath.Join(s.dir, recordsDir, k.dir())
		entries, err := os.ReadDir(dir)
		if err != nil {
			return written, removed, fmt.Errorf("read records: %w", err)
		}
		have := map[string]bool{}
		for _, e := range entries {
			id, ok := strings.CutSuffix(e.Name(), ".json")
			_, pod := s.sandboxes[id]
			_, ctr := s.containers[id]
			_, intent := s.intents[id]
			held := (k == recordSandbox && pod) || (k == recordContainer && ctr)
			if ok && e.Type().IsRegular() && (held || intent) {
				have[id] = true
				continue
			}
			path := filepath.Join(dir, e.Name())
			if err := os.RemoveAll(path); err != nil {
				return written, removed, fmt.Errorf("remove stale record: %w", err)
			}
			removed = append(removed, path)
		}
		if len(removed) > 0 {
			if err := s.syncDir(dir); err != nil {
				return written, removed, err
			}
		}
		switch k {
		case recordSandbox:
			for id, sb := range s.sandboxes {
				if have[id] || !safeName(id) {
					continue
				}
				cfg, err := protojson.Marshal(sb.Config)
				if err == nil {
					err = s.writeRecord(k, id, sb, cfg)
				}
				if err != nil {
					return written, removed, err
				}
				written = append(written, s.recordPath(k, id))
			}
		case recordContainer:
			for id, c := range s.containers {
				if have[id] || !safeName(id) {
					continue
				}
				cfg, err := protojson.Marshal(c.Config)
				if err == nil {
					err = s.writeRecord(k, id, c, cfg)
				}
				if err != nil {
					return written, removed, err
				}
				written = append(written, s.recordPath(k, id))
			}
		}
	}
	return written, removed, nil
}
