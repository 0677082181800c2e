package image

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"strconv"
	"sync"
	"time"

	apievents "github.com/containerd/containerd/api/events"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"
)

// index mirrors the image records of the service's containerd namespace in
// memory, as containerd's CRI plugin keeps its image store: ImageStatus and
// ListImages answer from it without a round trip to containerd. It is kept
// current by containerd's image events (an event makes the record it names
// be read again) and by the service's own writes (applied when they
// return, so that a call after PullImage or RemoveImage sees them at once).
// Until the watcher has subscribed and listed every record, and whenever
// its event stream fails, the index is not valid and the service asks
// containerd directly.
//
// Updates of one record are ordered by a sequence number taken when the
// read (or write) that gives the new value begins: a value read earlier
// never replaces one read later. A change made after a read began sends an
// event after it, so the index converges on containerd's records.
type index struct {
	mu    sync.RWMutex
	valid bool
	recs  map[string]images.Image
	// seq is, per record name, the sequence number of the value applied
	// last (deleted names keep theirs).
	seq  map[string]uint64
	next uint64
	// gen counts the changes of recs; built is the records grouped into
	// images at generation builtGen (nil when none was kept).
	gen      uint64
	built    []Image
	builtGen uint64
}

func newIndex() *index {
	return &index{recs: map[string]images.Image{}, seq: map[string]uint64{}}
}

// begin takes the sequence number of a read or write about to start.
func (x *index) begin() uint64 {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.next++
	return x.next
}

// put applies rec (read or written under seq), unless a later one was.
func (x *index) put(seq uint64, rec images.Image) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.seq[rec.Name] >= seq {
		return
	}
	x.seq[rec.Name] = seq
	if old, ok := x.recs[rec.Name]; ok && sameRecord(old, rec) {
		// The event of the service's own write, read again: the images
		// built from the records stay valid.
		return
	}
	x.recs[rec.Name] = rec
	x.gen++
}

// sameRecord tells whether a and b are the same value of a record (a
// difference it misses, as a nil against an empty map, only costs a
// rebuild).
func sameRecord(a, b images.Image) bool {
	return a.Name == b.Name && reflect.DeepEqual(a.Target, b.Target) && maps.Equal(a.Labels, b.Labels) &&
		a.CreatedAt.Equal(b.CreatedAt) && a.UpdatedAt.Equal(b.UpdatedAt)
}

// drop applies the absence of name (seen under seq), unless a later read
// or write was applied.
func (x *index) drop(seq uint64, name string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.seq[name] >= seq {
		return
	}
	x.seq[name] = seq
	if _, ok := x.recs[name]; ok {
		delete(x.recs, name)
		x.gen++
	}
}

// reset applies a full listing taken under seq and makes the index valid:
// records the listing lacks are dropped, those it has are put, unless a
// later read or write of them was applied.
func (x *index) reset(seq uint64, recs []images.Image) {
	x.mu.Lock()
	defer x.mu.Unlock()
	listed := make(map[string]bool, len(recs))
	for _, rec := range recs {
		listed[rec.Name] = true
		if x.seq[rec.Name] < seq {
			x.seq[rec.Name] = seq
			x.recs[rec.Name] = rec
		}
	}
	for name := range x.recs {
		if !listed[name] && x.seq[name] < seq {
			x.seq[name] = seq
			delete(x.recs, name)
		}
	}
	x.gen++
	x.valid = true
}

// invalidate makes the service ask containerd until the next reset.
func (x *index) invalidate() {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.valid = false
	x.gen++
}

// record returns the record named name; ok is false when the index is not
// valid (found then means nothing).
func (x *index) record(name string) (rec images.Image, found, ok bool) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	if !x.valid {
		return images.Image{}, false, false
	}
	rec, found = x.recs[name]
	return rec, found, true
}

// records returns every record and their generation, or the images built
// from them when they were kept at the current generation (recs is then
// nil); ok is false when the index is not valid.
func (x *index) records() (recs []images.Image, gen uint64, built []Image, ok bool) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	if !x.valid {
		return nil, 0, nil, false
	}
	if x.built != nil && x.builtGen == x.gen {
		return nil, x.gen, x.built, true
	}
	recs = make([]images.Image, 0, len(x.recs))
	for _, rec := range x.recs {
		recs = append(recs, rec)
	}
	return recs, x.gen, nil, true
}

// keep stores the images built from the records of generation gen, unless
// a record changed since.
func (x *index) keep(gen uint64, built []Image) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.valid && gen == x.gen {
		x.built, x.builtGen = built, gen
	}
}

// watchRetry is how long the watcher waits before subscribing again after
// containerd's event stream failed.
const watchRetry = 500 * time.Millisecond

// watch keeps the index current until ctx ends: it subscribes to the image
// events of the service's namespace, lists every record, then reads again
// each record an event names. When the stream fails it invalidates the
// index and starts over.
func (s *Service) watch(ctx context.Context) {
	defer close(s.watchDone)
	filter := "topic~=" + strconv.Quote("^/images/") + ",namespace==" + strconv.Quote(s.namespace)
	for ctx.Err() == nil {
		err := s.watchOnce(ctx, filter)
		s.idx.invalidate()
		if ctx.Err() != nil {
			return
		}
		s.logger.WarnContext(ctx, "image events: starting over", "error", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(watchRetry):
		}
	}
}

func (s *Service) watchOnce(ctx context.Context, filter string) error {
	sub, cancel := context.WithCancel(ctx)
	defer cancel()
	evs, errs := s.client.EventService().Subscribe(sub, filter)
	// Subscribed first, listed then: a change the listing misses sends an
	// event after it.
	if err := s.relist(ctx); err != nil {
		return err
	}
	s.logger.DebugContext(ctx, "image index ready")
	for {
		select {
		case err := <-errs:
			if err == nil {
				err = errors.New("event stream ended")
			}
			return err
		case ev := <-evs:
			if ev == nil || ev.Event == nil {
				continue
			}
			name, err := imageEventName(ev.Event)
			if err != nil {
				s.logger.DebugContext(ctx, "image event not understood", "topic", ev.Topic, "error", err)
				if err := s.relist(ctx); err != nil {
					return err
				}
				continue
			}
			if err := s.refresh(ctx, name); err != nil {
				return err
			}
		}
	}
}

// relist reads every record of the namespace into the index.
func (s *Service) relist(ctx context.Context) error {
	ctx, cancel := s.callCtx(ctx)
	defer cancel()
	seq := s.idx.begin()
	recs, err := s.client.ImageService().List(ctx)
	if err != nil {
		return fmt.Errorf("list image records: %w", err)
	}
	s.idx.reset(seq, recs)
	return nil
}

// refresh reads the record name again into the index.
func (s *Service) refresh(ctx context.Context, name string) error {
	ctx, cancel := s.callCtx(ctx)
	defer cancel()
	seq := s.idx.begin()
	rec, err := s.client.ImageService().Get(ctx, name)
	switch {
	case err == nil:
		s.idx.put(seq, rec)
	case errdefs.IsNotFound(err):
		s.idx.drop(seq, name)
	default:
		return fmt.Errorf("get image record %q: %w", name, err)
	}
	return nil
}

// imageEventName is the record name an image event is about.
func imageEventName(any typeurl.Any) (string, error) {
	v, err := typeurl.UnmarshalAny(any)
	if err != nil {
		return "", err
	}
	switch e := v.(type) {
	case *apievents.ImageCreate:
		return e.GetName(), nil
	case *apievents.ImageUpdate:
		return e.GetName(), nil
	case *apievents.ImageDelete:
		return e.GetName(), nil
	}
	return "", fmt.Errorf("unexpected event %T", v)
}
