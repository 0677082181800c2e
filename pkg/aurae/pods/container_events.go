package pods

import (
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	podsv0 "github.com/aurae-runtime/aurae-cri/api/pods/v0"
	"github.com/aurae-runtime/aurae-cri/internal/fanout"
)

// eventBuffer is how many events a subscriber may lag behind before it is
// dropped.
const eventBuffer = 1024

// eventHub fans container events out to subscribers; one that falls
// behind is dropped (its channel closed).
type eventHub struct {
	fanout.Hub[*podsv0.ContainerEvent]
}

func (h *eventHub) subscribe() (<-chan *podsv0.ContainerEvent, func()) {
	return h.Subscribe(eventBuffer)
}

func (h *eventHub) publish(typ podsv0.ContainerEventType, st *podsv0.ContainerStatus) {
	h.Publish(&podsv0.ContainerEvent{Type: typ, Status: st, Timestamp: time.Now().UnixNano()})
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
