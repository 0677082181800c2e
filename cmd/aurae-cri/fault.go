package main

import (
	"log/slog"
	"os"
	"strings"
	"syscall"
)

// faultFileEnv, for the fault injection tests only (test/e2e), names a
// file holding one of pkg/cri's fault points ("pod-network", ...): on
// reaching that point aurae-cri kills itself with SIGKILL, right after a
// side effect and before its record, as a crash there would. The file is
// read at each point, so a test can aim at another point, or none, without
// a restart. Unset (always, outside those tests), nothing is read.
const faultFileEnv = "AURAE_CRI_TEST_FAULT_FILE"

// faultHook is cri.Config.Fault from the environment; nil when unset.
func faultHook(logger *slog.Logger) func(point string) {
	path := os.Getenv(faultFileEnv)
	if path == "" {
		return nil
	}
	logger.Warn("fault injection is on: aurae-cri kills itself at the point named in the file", "file", path)
	return func(point string) {
		b, err := os.ReadFile(path)
		if err != nil || strings.TrimSpace(string(b)) != point {
			return
		}
		logger.Warn("fault injection: SIGKILL", "point", point)
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // until the signal lands
	}
}
