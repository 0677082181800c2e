package client

import (
	"context"
	"errors"

	"github.com/containerd/errdefs/pkg/errgrpc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// wireError is an error auraed answered: its kind is an errdefs class
// again (errdefs.IsNotFound and the like match, as they do on the server's
// side of the wire), and it still carries the gRPC status (status.Code
// answers the code auraed sent).
type wireError struct {
	native error
	st     *status.Status
}

func (e *wireError) Error() string              { return e.native.Error() }
func (e *wireError) Unwrap() error              { return e.native }
func (e *wireError) GRPCStatus() *status.Status { return e.st }

// fromWire turns a gRPC status error into a wireError; any other error
// (io.EOF at the end of a stream, a context's error) is left as it is.
func fromWire(err error) error {
	if err == nil {
		return nil
	}
	var already *wireError
	if errors.As(err, &already) {
		return err
	}
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	return &wireError{native: errgrpc.ToNative(err), st: st}
}

// unaryErrors converts the errors of unary calls.
func unaryErrors(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	return fromWire(invoker(ctx, method, req, reply, cc, opts...))
}

// streamErrors converts the errors of streams: opening one, and each
// send, receive and header.
func streamErrors(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	s, err := streamer(ctx, desc, cc, method, opts...)
	if err != nil {
		return nil, fromWire(err)
	}
	return &wireStream{ClientStream: s}, nil
}

type wireStream struct{ grpc.ClientStream }

func (s *wireStream) SendMsg(m any) error { return fromWire(s.ClientStream.SendMsg(m)) }
func (s *wireStream) RecvMsg(m any) error { return fromWire(s.ClientStream.RecvMsg(m)) }
func (s *wireStream) CloseSend() error    { return fromWire(s.ClientStream.CloseSend()) }

func (s *wireStream) Header() (metadata.MD, error) {
	md, err := s.ClientStream.Header()
	return md, fromWire(err)
}
