package client

import (
	"context"
	"errors"
	"io"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	podsv0 "github.com/aurae-runtime/aurae-cri/api/pods/v0"
)

type errPods struct {
	podsv0.UnimplementedPodServiceServer
}

func (errPods) ContainerStatus(context.Context, *podsv0.ContainerStatusRequest) (*podsv0.ContainerStatusResponse, error) {
	return nil, status.Error(codes.NotFound, `container "x": not found`)
}

func (errPods) ContainerEvents(_ *podsv0.ContainerEventsRequest, st grpc.ServerStreamingServer[podsv0.ContainerEvent]) error {
	if err := st.Send(&podsv0.ContainerEvent{}); err != nil {
		return err
	}
	return status.Error(codes.Unavailable, "pod service closed")
}

func (errPods) ListPods(context.Context, *podsv0.ListPodsRequest) (*podsv0.ListPodsResponse, error) {
	return &podsv0.ListPodsResponse{}, nil
}

// TestErrorsKeepTheirKind: auraed's status errors come out of the client
// as errdefs kinds (and still with their gRPC code), on unary calls and
// streams; io.EOF and successes are untouched.
func TestErrorsKeepTheirKind(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a.sock")
	lis, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	podsv0.RegisterPodServiceServer(srv, errPods{})
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Dial(ctx, "unix://"+path)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	pods := podsv0.NewPodServiceClient(c.Conn)

	_, err = pods.ContainerStatus(ctx, &podsv0.ContainerStatusRequest{ContainerId: "x"})
	if !errdefs.IsNotFound(err) || status.Code(err) != codes.NotFound {
		t.Errorf("unary NotFound: %v (errdefs %v, code %s)", err, errdefs.IsNotFound(err), status.Code(err))
	}
	if _, err := pods.Free(ctx, &podsv0.FreeRequest{PodId: "p"}); !errdefs.IsNotImplemented(err) {
		t.Errorf("unimplemented: %v", err)
	}
	if _, err := pods.ListPods(ctx, &podsv0.ListPodsRequest{}); err != nil {
		t.Errorf("a success: %v", err)
	}
	st, err := pods.ContainerEvents(ctx, &podsv0.ContainerEventsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Recv(); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Recv(); !errdefs.IsUnavailable(err) || status.Code(err) != codes.Unavailable {
		t.Errorf("stream Unavailable: %v", err)
	}
	if got := fromWire(io.EOF); !errors.Is(got, io.EOF) {
		t.Errorf("io.EOF became %v", got)
	}
}
