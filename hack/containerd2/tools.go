//go:build tools

// Package containerd2 pins github.com/containerd/containerd/v2 for build.sh,
// which builds its containerd daemon and its runc v2 shim: the containerd
// 2.x peer of the benchmarks (test/e2e/bench_*_test.go).
package containerd2

import (
	_ "github.com/containerd/containerd/v2/cmd/containerd"
	_ "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2"
)
