package containerdproc

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// disabledPlugins are the plugins a child does not need: the CRI plugin
// (aurae-cri is the CRI server) and the snapshotters that only probe the
// host and log errors.
var disabledPlugins = []string{
	"io.containerd.grpc.v1.cri",
	"io.containerd.snapshotter.v1.aufs",
	"io.containerd.snapshotter.v1.btrfs",
	"io.containerd.snapshotter.v1.devmapper",
	"io.containerd.snapshotter.v1.zfs",
}

// renderConfig returns a containerd configuration (version 2, read by
// containerd 1.6 and 1.7; 2.x migrates it) that keeps every file of the
// child under dir.
func renderConfig(dir, logLevel string) string {
	if logLevel == "" {
		logLevel = "info"
	}
	quoted := make([]string, len(disabledPlugins))
	for i, p := range disabledPlugins {
		quoted[i] = tomlString(p)
	}
	var b strings.Builder
	b.WriteString("# Written by aurae-cri; rewritten at every start.\n")
	b.WriteString("version = 2\n")
	fmt.Fprintf(&b, "root = %s\n", tomlString(filepath.Join(dir, "root")))
	fmt.Fprintf(&b, "state = %s\n", tomlString(filepath.Join(dir, "state")))
	fmt.Fprintf(&b, "disabled_plugins = [%s]\n", strings.Join(quoted, ", "))
	b.WriteString("\n[grpc]\n")
	fmt.Fprintf(&b, "  address = %s\n", tomlString(filepath.Join(dir, "containerd.sock")))
	b.WriteString("\n[ttrpc]\n")
	fmt.Fprintf(&b, "  address = %s\n", tomlString(filepath.Join(dir, "containerd.sock.ttrpc")))
	b.WriteString("\n[debug]\n")
	fmt.Fprintf(&b, "  level = %s\n", tomlString(logLevel))
	b.WriteString("\n[metrics]\n  address = \"\"\n")
	// The opt plugin would otherwise create /opt/containerd.
	b.WriteString("\n[plugins]\n  [plugins.\"io.containerd.internal.v1.opt\"]\n")
	fmt.Fprintf(&b, "    path = %s\n", tomlString(filepath.Join(dir, "opt")))
	return b.String()
}

func writeConfig(path, dir, logLevel string) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(renderConfig(dir, logLevel)), 0o640); err != nil {
		return fmt.Errorf("write containerd config: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write containerd config: %w", err)
	}
	return nil
}

// tomlString quotes s as a TOML basic string.
func tomlString(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, "\\u%04X", r)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}
