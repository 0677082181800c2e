package vm

import (
	"context"
	"time"

	"github.com/aurae-runtime/aurae-cri/pkg/controller"
	"github.com/aurae-runtime/aurae-cri/pkg/metrics"
)

// eventBuffer is how far a subscriber may lag behind before it is dropped.
const eventBuffer = 256

// Events delivers the container events of every running VM pod's guest.
func (c *Controller) Events(ctx context.Context) (<-chan controller.ContainerEvent, error) {
	ch, cancel := c.events.Subscribe(eventBuffer)
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
		if c.cfg.GuestReconnected != nil && g.Conn != nil {
			go metrics.WatchReconnects(g.ctx, g.Conn, c.cfg.GuestReconnected)
		}
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
				c.events.Publish(ev)
			}
		}
		if g.ctx.Err() != nil {
			return
		}
		c.events.DropAll()
		select {
		case <-g.ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}
