package pods_test

import (
	"os"
	"testing"

	"github.com/aurae-runtime/aurae-cri/pkg/aurae/roles"
)

// TestMain lets this test binary play the helper roles, as auraed does: the
// pods it creates start it again as their namespace holder, and tty execs as
// their exec shim. (An external test package: roles imports pods.)
func TestMain(m *testing.M) {
	roles.Run()
	os.Exit(m.Run())
}
