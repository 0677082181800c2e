package main

import (
	"context"
	"flag"

	discoveryv0 "github.com/aurae-runtime/aurae-cri/api/discovery/v0"
)

var discoveryResource = resource{name: "discovery", short: "whether auraed answers, and its version", commands: []command{
	{use: "", short: "call Discover", setup: discover},
}}

func discover(*flag.FlagSet) func(context.Context, *app, []string) error {
	return func(ctx context.Context, a *app, _ []string) error {
		resp, err := a.client.Discovery.Discover(ctx, &discoveryv0.DiscoverRequest{})
		if err != nil {
			return err
		}
		return a.emit(resp, []string{"HEALTHY", "VERSION"}, func() [][]string {
			return [][]string{{boolStr(resp.GetHealthy()), resp.GetVersion()}}
		})
	}
}
