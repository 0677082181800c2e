package cells_test

import (
	"os"
	"testing"

	"github.com/aurae-runtime/aurae-cri/pkg/aurae/roles"
)

// TestMain lets this test binary play the helper roles, as auraed does: the
// cells it allocates with isolated namespaces start it again as their init.
// (An external test package: roles imports cells.)
func TestMain(m *testing.M) {
	roles.Run()
	os.Exit(m.Run())
}
