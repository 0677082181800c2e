// Command kubelet is the upstream kubelet, built from the Go module proxy at
// the k8s.io/kubernetes version pinned in this directory's go.mod. It is the
// body of k8s.io/kubernetes/cmd/kubelet/kubelet.go, which cannot be built
// with `go build k8s.io/kubernetes/cmd/kubelet` from outside the kubernetes
// repository because its go.mod replaces the k8s.io staging modules with
// local directories. build.sh builds it; test/kubelet runs it.
package main

import (
	"context"
	"os"

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"          // for JSON log format registration
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // for client metric registration
	_ "k8s.io/component-base/metrics/prometheus/version"  // for version metric registration
	"k8s.io/kubernetes/cmd/kubelet/app"
)

func main() {
	command := app.NewKubeletCommand(context.Background())
	code := cli.Run(command)
	os.Exit(code)
}
