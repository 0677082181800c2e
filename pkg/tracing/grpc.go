package tracing

import (
	"context"
	"sync/atomic"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
)

// exporting is set by Setup with an endpoint.
var exporting atomic.Bool

// Exporting tells whether Setup was given an endpoint: this process's
// spans leave it.
func Exporting() bool { return exporting.Load() }

// propagator reads and writes the W3C traceparent header.
var propagator = propagation.TraceContext{}

// ServerOptions make a gRPC server continue its callers' traces. When this
// process exports (Setup came first), each call is a span (otelgrpc);
// otherwise a call only carries its caller's trace context on, to the calls
// it makes: otelgrpc's handler costs tens of microseconds a call even
// with no exporter, more than a cheap call's own work.
func ServerOptions() []grpc.ServerOption {
	if Exporting() {
		return []grpc.ServerOption{grpc.StatsHandler(otelgrpc.NewServerHandler(otelgrpc.WithPropagators(propagator)))}
	}
	return []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
			return handler(extract(ctx), req)
		}),
		grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
			ctx := extract(ss.Context())
			if ctx == ss.Context() {
				return handler(srv, ss)
			}
			return handler(srv, &contextStream{ServerStream: ss, ctx: ctx})
		}),
	}
}

// DialOptions are ServerOptions for a client: spans when exporting, else
// the trace context of the call's ctx (its caller's) in the request's
// headers.
func DialOptions() []grpc.DialOption {
	if Exporting() {
		return []grpc.DialOption{grpc.WithStatsHandler(otelgrpc.NewClientHandler(otelgrpc.WithPropagators(propagator)))}
	}
	return []grpc.DialOption{
		grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			return invoker(inject(ctx), method, req, reply, cc, opts...)
		}),
		grpc.WithChainStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
			return streamer(inject(ctx), desc, cc, method, opts...)
		}),
	}
}

// extract is ctx with the remote span context its incoming traceparent
// names, ctx itself when there is none.
func extract(ctx context.Context) context.Context {
	md, ok := metadata.FromIncomingContext(ctx)
	if !ok || len(md.Get("traceparent")) == 0 {
		return ctx
	}
	return propagator.Extract(ctx, metadataCarrier(md))
}

// inject is ctx with its span context, if any, in the outgoing headers.
func inject(ctx context.Context) context.Context {
	if !trace.SpanContextFromContext(ctx).IsValid() {
		return ctx
	}
	md, _ := metadata.FromOutgoingContext(ctx)
	md = md.Copy()
	propagator.Inject(ctx, metadataCarrier(md))
	return metadata.NewOutgoingContext(ctx, md)
}

// metadataCarrier is gRPC metadata as a propagation.TextMapCarrier.
type metadataCarrier metadata.MD

func (c metadataCarrier) Get(key string) string {
	if v := metadata.MD(c).Get(key); len(v) > 0 {
		return v[0]
	}
	return ""
}

func (c metadataCarrier) Set(key, value string) { metadata.MD(c).Set(key, value) }

func (c metadataCarrier) Keys() []string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	return keys
}

// contextStream is a server stream whose Context is ctx.
type contextStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *contextStream) Context() context.Context { return s.ctx }
