package e2e

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"os"
	"testing"
	"time"

	"google.golang.org/grpc/status"

	cellsv0 "github.com/aurae-runtime/aurae-cri/api/cells/v0"
	discoveryv0 "github.com/aurae-runtime/aurae-cri/api/discovery/v0"
	"github.com/aurae-runtime/aurae-cri/internal/testpki"
)

// TestAuraedMetrics: auraed's /metrics, on loopback in plain HTTP, counts
// its calls and their errors by code, and its cells and VMs.
func TestAuraedMetrics(t *testing.T) {
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	a := startAuraed(t, "--metrics-address", addr)
	ctx := t.Context()
	if _, err := a.Client().Discovery.Discover(ctx, &discoveryv0.DiscoverRequest{}); err != nil {
		t.Fatal(err)
	}
	_, err := a.Client().Cells.Free(ctx, &cellsv0.CellServiceFreeRequest{CellName: "no-such-cell"})
	if err == nil {
		t.Fatal("Free of an unknown cell succeeded")
	}
	families := scrapeMetrics(t, "http://"+addr+"/metrics")
	discover := map[string]string{"service": "aurae.discovery.v0.DiscoveryService", "method": "Discover"}
	if m := sample(families, "auraed_grpc_requests_total", discover); m == nil || m.GetCounter().GetValue() < 2 {
		// The harness's readiness Discover, and ours.
		t.Errorf("auraed_grpc_requests_total%v = %v, want 2 at least", discover, m)
	}
	free := map[string]string{"service": "aurae.cells.v0.CellService", "method": "Free", "code": status.Code(err).String()}
	if m := sample(families, "auraed_grpc_errors_total", free); m == nil || m.GetCounter().GetValue() != 1 {
		t.Errorf("auraed_grpc_errors_total%v = %v, want 1", free, m)
	}
	if m := sample(families, "auraed_cells", nil); m == nil || m.GetGauge().GetValue() != 0 {
		t.Errorf("auraed_cells = %v, want 0", m)
	}
	if m := sample(families, "auraed_vms", map[string]string{"state": "running"}); m == nil || m.GetGauge().GetValue() != 0 {
		t.Errorf("auraed_vms{state=running} = %v, want 0", m)
	}
}

// TestAuraedMetricsMutualTLS: on a non-loopback address, auraed serves
// metrics with the mutual TLS of --listen: a client certificate of the CA
// is served, none is not, and plain HTTP is not.
func TestAuraedMetricsMutualTLS(t *testing.T) {
	dir := t.TempDir()
	ca := testpki.NewCA(t, dir, "aurae")
	srv, cl := ca.Server("auraed"), ca.Client("prometheus")
	port := freePort(t)
	startAuraed(t, "--listen", "127.0.0.1:0", "--tls-cert", srv.CertFile, "--tls-key", srv.KeyFile, "--client-ca", ca.CertFile,
		"--metrics-address", fmt.Sprintf("0.0.0.0:%d", port))
	pem, err := os.ReadFile(ca.CertFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	pair, err := tls.LoadX509KeyPair(cl.CertFile, cl.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	url := fmt.Sprintf("https://127.0.0.1:%d/metrics", port)
	client := func(cfg *tls.Config) *http.Client {
		return &http.Client{Timeout: 2 * time.Minute, Transport: &http.Transport{TLSClientConfig: cfg}}
	}
	resp, err := client(&tls.Config{RootCAs: pool, Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS13}).Get(url)
	if err != nil {
		t.Fatalf("with a client certificate of the CA: %v", err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("with a client certificate of the CA: %s", resp.Status)
	}
	if resp, err := client(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS13}).Get(url); err == nil {
		_ = resp.Body.Close()
		t.Errorf("served without a client certificate: %s", resp.Status)
	}
	if resp, err := client(nil).Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", port)); err == nil {
		_ = resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Error("served in plain HTTP")
		}
	}
}
