// Package version holds the version of the aurae-cri binaries.
package version

// Version is set at build time by the Makefile:
//
//	-ldflags "-X github.com/aurae-runtime/aurae-cri/pkg/version.Version=$(git describe --always --dirty)"
var Version = "dev"
