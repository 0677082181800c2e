package pods

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	podsv0 "github.com/aurae-runtime/aurae-cri/api/pods/v0"
)

func TestContainerEvents(t *testing.T) {
	e := newEnv(t)
	cl := e.streamClient()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := cl.ContainerEvents(ctx, &podsv0.ContainerEventsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Header(); err != nil { // subscribed
		t.Fatal(err)
	}
	e.allocate(&podsv0.Pod{Id: "events"})
	e.start("events", e.container("quick", spec(t, nil, "sh", "-c", "exit 2")))
	e.waitExited("quick", 10*time.Second)
	if _, err := e.svc.RemoveContainer(ctx, &podsv0.RemoveContainerRequest{ContainerId: "quick"}); err != nil {
		t.Fatal(err)
	}
	want := []podsv0.ContainerEventType{
		podsv0.ContainerEventType_CONTAINER_EVENT_TYPE_STARTED,
		podsv0.ContainerEventType_CONTAINER_EVENT_TYPE_EXITED,
		podsv0.ContainerEventType_CONTAINER_EVENT_TYPE_REMOVED,
	}
	for i, typ := range want {
		ev, err := st.Recv()
		if err != nil {
			t.Fatalf("event %d: %v", i, err)
		}
		if ev.GetType() != typ || ev.GetStatus().GetId() != "quick" || ev.GetTimestamp() == 0 {
			t.Fatalf("event %d: %v, want %s of quick", i, ev, typ)
		}
		if typ == podsv0.ContainerEventType_CONTAINER_EVENT_TYPE_EXITED && ev.GetStatus().GetExitCode() != 2 {
			t.Errorf("exit event: %v", ev)
		}
	}
	// Close ends the stream.
	if err := e.svc.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Recv(); status.Code(err) != codes.Unavailable {
		t.Errorf("after Close: %v, want Unavailable", err)
	}
	e.svc = e.newService()
}

func TestEventHubDropsSlowSubscriber(t *testing.T) {
	var h eventHub
	ch, cancel := h.subscribe()
	defer cancel()
	for i := 0; i < eventBuffer+1; i++ {
		h.publish(podsv0.ContainerEventType_CONTAINER_EVENT_TYPE_STARTED, &podsv0.ContainerStatus{Id: "x"})
	}
	n := 0
	for range ch {
		n++
	}
	if n != eventBuffer {
		t.Errorf("got %d events before the drop, want %d", n, eventBuffer)
	}
}
