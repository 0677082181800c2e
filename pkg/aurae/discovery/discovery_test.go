package discovery

import (
	"context"
	"testing"

	discoveryv0 "github.com/aurae-runtime/aurae-cri/api/discovery/v0"
	"github.com/aurae-runtime/aurae-cri/pkg/version"
)

func TestDiscover(t *testing.T) {
	old := version.Version
	version.Version = "v1.2.3-4-gabcdef"
	t.Cleanup(func() { version.Version = old })

	resp, err := NewService().Discover(context.Background(), &discoveryv0.DiscoverRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if !resp.GetHealthy() || resp.GetVersion() != "v1.2.3-4-gabcdef" {
		t.Fatalf("Discover = %v, want healthy and version v1.2.3-4-gabcdef", resp)
	}
}
