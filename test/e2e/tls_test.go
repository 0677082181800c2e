package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"os"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	discoveryv0 "github.com/aurae-runtime/aurae-cri/api/discovery/v0"
)

// discoverWithoutClientCert calls Discover over TLS that trusts the server's
// CA but presents no client certificate (client.Dial always presents one).
func discoverWithoutClientCert(t *testing.T, addr, caFile string) error {
	t.Helper()
	pem, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	creds := credentials.NewTLS(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS13})
	conn, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close() }()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = discoveryv0.NewDiscoveryServiceClient(conn).Discover(ctx, &discoveryv0.DiscoverRequest{})
	return err
}
