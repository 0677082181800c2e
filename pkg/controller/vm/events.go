package vm

import (
	"context"
	"sync"
	"time"

	"github.com/aurae-runtime/aurae-cri/pkg/controller"
)

// eventBuffer is how far a subscriber may lag behind before it is dropped.
const eventBuffer = 256

// eventHub fans the guests' container events out to subscribers; a
// subscriber that falls behind, or that may have missed events (a guest's
// stream was lost), is dropped: its channel closes and it resyncs.
type eventHub struct {
	mu   sync.Mutex
	subs map[chan controller.ContainerEvent]struct{}
}

func (h *eventHub) subscribe() (chan controller.ContainerEvent, func()) {
	ch := make(chan controller.ContainerEvent, eventBuffer)
	h.mu.Lock()
	if h.subs == nil {
		h.subs = map[chan controller.ContainerEvent]struct{}{}
	}
	h.subs[ch] = struct{}{}
	h.mu.Unlock()
	return ch, func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		if _, ok := h.subs[ch]; ok {
			delete(h.subs, ch)
			close(ch)
		}
	}
}

func (h *eventHub) publish(ev controller.ContainerEvent) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for ch := range h.subs {
		select {
		case ch <- ev:
		default:
			delete(h.subs, ch)
			close(ch)
		}
	}
}

// dropAll closes every subscriber: they may have missed events.
func (h *eventHub) dropAll() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for ch := range h.subs {
		delete(h.subs, ch)
		close(ch)
	}
}

// Events delivers the container events of every running VM pod's guest.
func (c *Controller) Events(ctx context.Context) (<-chan controller.ContainerEvent, error) {
	ch, cancel := c.events.subscribe()
	context.AfterFunc(ctx, cancel)
	return ch, nil
}

// setGuest makes g the pod's guest and follows its container events until
// it is closed.
func (c *Controller) setGuest(p *vmPod, g *guest) {
	c.mu.Lock()
	p.guest = g
	c.mu.Unlock()
	if g.ctx != nil {
		go c.follow(g)
	}
}

// follow forwards a guest's container events. When its stream is lost
// while the guest is still in use, the subscribers are dropped (they may
// have missed an event) and the stream is opened again.
func (c *Controller) follow(g *guest) {
	for g.ctx.Err() == nil {
		evs, err := g.pods.Events(g.ctx)
		if err == nil {
			for ev := range evs {
				c.events.publish(ev)
			}
		}
		if g.ctx.Err() != nil {
			return
		}
		c.events.dropAll()
		select {
		case <-g.ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}
