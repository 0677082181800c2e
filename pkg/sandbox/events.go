package sandbox

import (
	"sync"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Events fans container events out to GetContainerEvents subscribers. A
// subscriber that falls behind by more than its buffer loses events rather
// than slowing the runtime.
type Events struct {
	mu   sync.Mutex
	subs map[chan *runtimeapi.ContainerEventResponse]struct{}
}

// NewEvents returns an empty broadcaster.
func NewEvents() *Events {
	return &Events{subs: map[chan *runtimeapi.ContainerEventResponse]struct{}{}}
}

// Subscribe returns a channel of events from now on, and a cancel func.
func (e *Events) Subscribe() (<-chan *runtimeapi.ContainerEventResponse, func()) {
	ch := make(chan *runtimeapi.ContainerEventResponse, 1024)
	e.mu.Lock()
	e.subs[ch] = struct{}{}
	e.mu.Unlock()
	return ch, func() {
		e.mu.Lock()
		delete(e.subs, ch)
		e.mu.Unlock()
	}
}

// Publish sends ev to every subscriber.
func (e *Events) Publish(ev *runtimeapi.ContainerEventResponse) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for ch := range e.subs {
		select {
		case ch <- ev:
		default:
		}
	}
}
