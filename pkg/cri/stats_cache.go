package cri

import (
	"context"
	"sync"
	"time"

	"github.com/aurae-runtime/aurae-cri/pkg/controller"
	"github.com/aurae-runtime/aurae-cri/pkg/sandbox"
)

const (
	// statsTimeout bounds one controller call for a container's figures.
	statsTimeout = 10 * time.Second
	// statsWait is how long a stats request waits for fresh figures; the
	// containers whose controller has not answered by then (a wedged pod
	// or VM) answer their last known figures, and their call goes on in the
	// background to refresh them.
	statsWait = time.Second
	// fanoutLimit bounds the controller calls one fan-out (stats,
	// recovery, the exit poll) has in flight at once.
	fanoutLimit = 16
)

// statsCache keeps each container's last figures and its call in flight,
// so that a pod whose controller does not answer neither slows the stats of
// the others nor piles up calls: while a container's call is in flight, no
// other starts for it.
type statsCache struct {
	mu       sync.Mutex
	last     map[string]controller.Stats
	inflight map[string]chan struct{}
	// slots bounds the controller calls in flight.
	slots chan struct{}
}

// collectStats refreshes the figures of cs (running containers) and
// answers what is known of each once they are all in, or after statsWait
// (or when ctx ends), whichever comes first. A container without figures
// yet is missing from the answer.
func (r *Runtime) collectStats(ctx context.Context, cs []sandbox.Container) map[string]controller.Stats {
	sc := &r.stats
	sc.mu.Lock()
	if sc.last == nil {
		sc.last, sc.inflight = map[string]controller.Stats{}, map[string]chan struct{}{}
		sc.slots = make(chan struct{}, fanoutLimit)
	}
	var wait []chan struct{}
	for _, c := range cs {
		if _, busy := sc.inflight[c.ID]; busy {
			continue // a slow one: its last figures answer
		}
		ctrl, err := r.controllerOf(c.SandboxID)
		if err != nil {
			continue
		}
		done := make(chan struct{})
		sc.inflight[c.ID] = done
		wait = append(wait, done)
		go r.fetchStats(ctrl, c.ID, done)
	}
	sc.mu.Unlock()

	waitCtx, cancel := context.WithTimeout(ctx, statsWait)
	defer cancel()
	for _, done := range wait {
		select {
		case <-done:
		case <-waitCtx.Done():
		}
	}
	out := make(map[string]controller.Stats, len(cs))
	sc.mu.Lock()
	for _, c := range cs {
		if s, ok := sc.last[c.ID]; ok {
			out[c.ID] = s
		}
	}
	sc.mu.Unlock()
	return out
}

// fetchStats asks ctrl for a container's figures under its own deadline,
// detached from the request that started it, and keeps them.
func (r *Runtime) fetchStats(ctrl controller.Controller, id string, done chan struct{}) {
	sc := &r.stats
	defer func() {
		sc.mu.Lock()
		delete(sc.inflight, id)
		sc.mu.Unlock()
		close(done)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), statsTimeout)
	defer cancel()
	select {
	case sc.slots <- struct{}{}:
	case <-ctx.Done():
		return
	}
	defer func() { <-sc.slots }()
	s, err := ctrl.ContainerStats(ctx, id)
	if err != nil {
		r.log.Debug("container stats", "container", id, "error", err)
		return
	}
	if s.Timestamp.IsZero() {
		s.Timestamp = time.Now()
	}
	sc.mu.Lock()
	sc.last[id] = s
	sc.mu.Unlock()
}

// pruneStats forgets the figures of containers the store no longer has.
func (r *Runtime) pruneStats() {
	sc := &r.stats
	sc.mu.Lock()
	defer sc.mu.Unlock()
	for id := range sc.last {
		if _, err := r.store.Container(id); err != nil {
			delete(sc.last, id)
		}
	}
}
