//go:build tools

// Package crio pins github.com/cri-o/cri-o for build.sh, which builds its
// crio daemon (and pinns from the C source in the same module): the CRI-O
// peer of the benchmarks (test/e2e/bench_*_test.go).
package crio

import (
	_ "github.com/cri-o/cri-o/cmd/crio"
)
