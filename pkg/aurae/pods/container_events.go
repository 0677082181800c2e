package pods

import (
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	podsv0 "github.com/aurae-runtime/aurae-cri/api/pods/v0"
)

// eventBuffer is how many events a subscriber may lag behind before it is
// dropped.
const eventBuffer = 1024

// eventHub fans container events out to subscribers. Publishing never
// blocks: a subscriber whose buffer is full is dropped (its channel closed).
type eventHub struct {
	mu   sync.Mutex
	subs map[chan *podsv0.ContainerEvent]struct{}
}

func (h *eventHub) subscribe() (chan *podsv0.ContainerEvent, func()) {
	ch := make(chan *podsv0.ContainerEvent, eventBuffer)
	h.mu.Lock()
	if h.subs == nil {
		h.subs = map[chan *podsv0.ContainerEvent]struct{}{}
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

func (h *eventHub) publish(typ podsv0.ContainerEventType, st *podsv0.ContainerStatus) {
	ev := &podsv0.ContainerEvent{Type: typ, Status: st, Timestamp: time.Now().UnixNano()}
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

// ContainerEvents implements PodService.ContainerEvents. The response
// headers are sent once the subscription is in place: a client that waits
// for them misses no later event.
func (s *Service) ContainerEvents(_ *podsv0.ContainerEventsRequest, stream grpc.ServerStreamingServer[podsv0.ContainerEvent]) error {
	ch, cancel := s.events.subscribe()
	defer cancel()
	if err := stream.SendHeader(metadata.MD{}); err != nil {
		return err
	}
	for {
		select {
		case <-stream.Context().Done():
			return status.FromContextError(stream.Context().Err()).Err()
		case <-s.closedCh:
			return status.Error(codes.Unavailable, "pod service closed")
		case ev, ok := <-ch:
			if !ok {
				return status.Errorf(codes.ResourceExhausted, "container events: subscriber fell %d events behind; list and subscribe again", eventBuffer)
			}
			if err := stream.Send(ev); err != nil {
				return err
			}
		}
	}
}
