// Package tracing exports OpenTelemetry spans of the daemons' gRPC calls
// over OTLP. Every server and client the daemons make (pkg/aurae/server,
// pkg/aurae/client) carries the W3C trace context (the traceparent
// header) to the next hop, whether or not its process exports:
// aurae-cri → auraed → a VM's guest auraed. Only a process given an
// endpoint (Setup, before it makes its servers and clients) makes spans.
package tracing

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// CheckEndpoint refuses an OTLP endpoint that is not host:port on a
// loopback address: spans go out as plain gRPC, so only to a collector on
// this node.
func CheckEndpoint(endpoint string) error {
	if endpoint == "" {
		return nil
	}
	host, port, err := net.SplitHostPort(endpoint)
	if err != nil || port == "" {
		return fmt.Errorf("otlp endpoint %q is not host:port", endpoint)
	}
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("otlp endpoint %q is not on a loopback address (spans are sent without TLS)", endpoint)
	}
	return nil
}

// Flush runs the function Setup returned, within seconds, and logs its
// failure.
func Flush(stop func(context.Context) error, logger *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := stop(ctx); err != nil {
		logger.Warn("flush traces", "error", err)
	}
}

// Setup exports this process's spans, as service, to the OTLP/gRPC
// collector at endpoint; "" exports nothing. The returned function
// flushes what is pending and stops the export.
func Setup(ctx context.Context, endpoint, service, version string) (func(context.Context) error, error) {
	if endpoint == "" {
		return func(context.Context) error { return nil }, nil
	}
	if err := CheckEndpoint(endpoint); err != nil {
		return nil, err
	}
	exp, err := otlptracegrpc.New(ctx, otlptracegrpc.WithEndpoint(endpoint), otlptracegrpc.WithInsecure())
	if err != nil {
		return nil, fmt.Errorf("otlp exporter: %w", err)
	}
	res := resource.NewSchemaless(
		attribute.String("service.name", service),
		attribute.String("service.version", version),
	)
	tp := sdktrace.NewTracerProvider(
		sdktrace.WithBatcher(exp, sdktrace.WithBatchTimeout(time.Second)),
		sdktrace.WithResource(res),
	)
	otel.SetTracerProvider(tp)
	exporting.Store(true)
	return tp.Shutdown, nil
}
