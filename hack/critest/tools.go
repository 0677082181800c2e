//go:build tools

// Package critest pins sigs.k8s.io/cri-tools for build.sh, which builds its
// cmd/critest test binary and crictl, and the ginkgo CLI of the version
// cri-tools requires (critest -parallel N runs itself under it).
package critest

import (
	_ "github.com/onsi/ginkgo/v2/ginkgo"
	_ "sigs.k8s.io/cri-tools/cmd/crictl"
	_ "sigs.k8s.io/cri-tools/cmd/critest"
)
