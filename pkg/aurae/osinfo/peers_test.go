package osinfo

import (
	"net"
	"strings"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/emptypb"

	osapi "github.com/aurae-runtime/aurae-cri/api/os"
	"github.com/aurae-runtime/aurae-cri/internal/testpki"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/server"
)

// countingListener counts the connections it accepted.
type countingListener struct {
	net.Listener
	n atomic.Int32
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

// TestPeerConnectionKept: calls naming a peer reuse one mutual-TLS
// connection to it; once the peer is gone its node answers an error
// while the call succeeds; Close closes the connection.
func TestPeerConnectionKept(t *testing.T) {
	dir := t.TempDir()
	ca := testpki.NewCA(t, dir, "aurae")
	srvPair, cliPair := ca.Server("peer"), ca.Client("here")
	tlsCfg, err := server.TLSConfig(srvPair.CertFile, srvPair.KeyFile, ca.CertFile)
	if err != nil {
		t.Fatal(err)
	}
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lis := &countingListener{Listener: inner}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(tlsCfg)))
	osapi.RegisterOSServiceServer(srv, New(Config{NodeName: "peer"}))
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	defer srv.Stop()

	s := New(Config{
		NodeName: "here",
		Peers:    map[string]string{"peer": lis.Addr().String()},
		PeerCert: cliPair.CertFile, PeerKey: cliPair.KeyFile, PeerCA: ca.CertFile,
	})
	defer func() { _ = s.Close() }()
	ctx := metadata.NewIncomingContext(t.Context(), metadata.Pairs(NodesKey, "peer,here"))
	for i := range 3 {
		resp, err := s.Memory(ctx, &emptypb.Empty{})
		if err != nil {
			t.Fatal(err)
		}
		msgs := resp.GetMessages()
		if len(msgs) != 2 || msgs[0].GetMetadata().GetHostname() != "peer" || msgs[0].GetMetadata().GetError() != "" || msgs[0].GetMeminfo().GetMemtotal() == 0 {
			t.Fatalf("call %d: %v", i, msgs)
		}
	}
	if n := lis.n.Load(); n != 1 {
		t.Fatalf("the peer accepted %d connections for 3 calls, want 1", n)
	}

	srv.Stop()
	if err := <-served; err != nil {
		t.Logf("serve: %v", err)
	}
	resp, err := s.Memory(ctx, &emptypb.Empty{})
	if err != nil {
		t.Fatalf("a call with a node down failed as a whole: %v", err)
	}
	if m := resp.GetMessages()[0]; m.GetMetadata().GetHostname() != "peer" || m.GetMetadata().GetError() == "" {
		t.Fatalf("the stopped peer's message = %v, want its error", m)
	}
	if m := resp.GetMessages()[1]; m.GetMetadata().GetHostname() != "here" || m.GetMetadata().GetError() != "" {
		t.Fatalf("this node's message = %v", m)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	resp, err = s.Memory(ctx, &emptypb.Empty{})
	if err != nil || !strings.Contains(resp.GetMessages()[0].GetMetadata().GetError(), "closed") {
		t.Fatalf("a call after Close = %v, %v; want the peer's error saying the service is closed", resp, err)
	}
}
