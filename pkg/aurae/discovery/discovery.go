// Package discovery serves the Aurae DiscoveryService: it tells a client that
// the host runs auraed, and which version.
package discovery

import (
	"context"

	discoveryv0 "github.com/aurae-runtime/aurae-cri/api/discovery/v0"
	"github.com/aurae-runtime/aurae-cri/pkg/version"
)

type service struct {
	discoveryv0.UnimplementedDiscoveryServiceServer
}

// NewService returns the gRPC DiscoveryService.
func NewService() discoveryv0.DiscoveryServiceServer {
	return service{}
}

// Discover answers healthy with the build's version.
func (service) Discover(context.Context, *discoveryv0.DiscoverRequest) (*discoveryv0.DiscoverResponse, error) {
	return &discoveryv0.DiscoverResponse{Healthy: true, Version: version.Version}, nil
}
