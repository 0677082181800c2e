package hypervisor

import (
	"os/exec"

	"github.com/aurae-runtime/aurae-cri/internal/linux"
)

// startIn starts cmd in the network namespace at netnsPath (the caller's
// when empty): the fork happens on a thread moved into the namespace, so
// the child is born there. A child that started is the caller's even when
// that thread could not go back (it is not reused).
func startIn(netnsPath string, cmd *exec.Cmd) error {
	err := linux.InNetNS(netnsPath, cmd.Start)
	if err != nil && cmd.Process != nil {
		return nil
	}
	return err
}
