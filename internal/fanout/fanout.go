// Package fanout hands values to every subscriber without ever blocking
// the publisher: a subscriber whose buffer is full is dropped (its channel
// closed), and it lists again and subscribes anew.
package fanout

import "sync"

// Hub fans values of T out to subscribers. The zero value is ready.
type Hub[T any] struct {
	mu   sync.Mutex
	subs map[chan T]struct{}
}

// Subscribe returns a channel of the values published from now on, with
// room for buffer of them, and the function that ends the subscription.
func (h *Hub[T]) Subscribe(buffer int) (<-chan T, func()) {
	ch := make(chan T, buffer)
	h.mu.Lock()
	if h.subs == nil {
		h.subs = map[chan T]struct{}{}
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

// Publish hands v to every subscriber; one that has no room is dropped.
func (h *Hub[T]) Publish(v T) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for ch := range h.subs {
		select {
		case ch <- v:
		default:
			delete(h.subs, ch)
			close(ch)
		}
	}
}

// DropAll ends every subscription (they may have missed values).
func (h *Hub[T]) DropAll() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for ch := range h.subs {
		delete(h.subs, ch)
		close(ch)
	}
}
