package client

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"

	discoveryv0 "github.com/aurae-runtime/aurae-cri/api/discovery/v0"
)

func TestParseAddress(t *testing.T) {
	for _, tc := range []struct {
		in, network, addr string
		bad               bool
	}{
		{in: "unix:///run/aurae/aurae.sock", network: "unix", addr: "/run/aurae/aurae.sock"},
		{in: "/run/aurae/aurae.sock", network: "unix", addr: "/run/aurae/aurae.sock"},
		{in: "tcp://127.0.0.1:8080", network: "tcp", addr: "127.0.0.1:8080"},
		{in: "tcp://[::1]:8080", network: "tcp", addr: "[::1]:8080"},
		{in: "unix://relative.sock", bad: true},
		{in: "tcp://nohostport", bad: true},
		{in: "http://127.0.0.1:80", bad: true},
		{in: "", bad: true},
	} {
		network, addr, err := parseAddress(tc.in)
		if tc.bad {
			if err == nil {
				t.Errorf("parseAddress(%q) = %s %s, want an error", tc.in, network, addr)
			}
			continue
		}
		if err != nil || network != tc.network || addr != tc.addr {
			t.Errorf("parseAddress(%q) = %q %q %v, want %q %q", tc.in, network, addr, err, tc.network, tc.addr)
		}
	}
}

func TestDialRefusesTCPWithoutTLS(t *testing.T) {
	_, err := Dial(context.Background(), "tcp://127.0.0.1:1")
	if !errors.Is(err, ErrTCPWithoutTLS) {
		t.Fatalf("got %v, want ErrTCPWithoutTLS", err)
	}
}

func TestDialMissingSocketSaysWhy(t *testing.T) {
	path := filepath.Join(t.TempDir(), "none.sock")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := Dial(ctx, "unix://"+path)
	if err == nil || !strings.Contains(err.Error(), "no such file") || !strings.Contains(err.Error(), path) {
		t.Fatalf("got %v, want an error naming the path and the missing file", err)
	}
}

type discovery struct {
	discoveryv0.UnimplementedDiscoveryServiceServer
}

func (discovery) Discover(context.Context, *discoveryv0.DiscoverRequest) (*discoveryv0.DiscoverResponse, error) {
	return &discoveryv0.DiscoverResponse{Healthy: true, Version: "test"}, nil
}

func TestDialUnix(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a.sock")
	lis, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	discoveryv0.RegisterDiscoveryServiceServer(srv, discovery{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(lis)
	}()
	t.Cleanup(func() { srv.Stop(); <-done })

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Dial(ctx, "unix://"+path)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	resp, err := c.Discovery.Discover(ctx, &discoveryv0.DiscoverRequest{})
	if err != nil || !resp.GetHealthy() || resp.GetVersion() != "test" {
		t.Fatalf("Discover = %v, %v", resp, err)
	}
	if c.Cells == nil || c.Observe == nil || c.Vms == nil || c.Conn == nil {
		t.Fatal("client lacks a service client")
	}
}
