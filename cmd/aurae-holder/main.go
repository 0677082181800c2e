// Command aurae-holder is the pod namespace holder that auraed starts in a
// pod's new namespaces (internal/holder); it is installed beside auraed
// (and aurae-cri, whose embedded auraed starts holders too). It only runs
// when auraed starts it.
package main

import (
	"fmt"
	"os"

	"github.com/aurae-runtime/aurae-cri/internal/holder"
)

func main() {
	if _, ok := os.LookupEnv(holder.Env); !ok {
		fmt.Fprintf(os.Stderr, "%s: the pod namespace holder; only auraed starts it\n", holder.BinaryName)
		os.Exit(2)
	}
	holder.Run()
}
