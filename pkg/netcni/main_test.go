package netcni

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	cnilibrary "github.com/containernetworking/cni/libcni"
)

// The root tests attach network namespaces of their own to a bridge of their
// own (aetest<random>, a 10.250.x.0/24 subnet) with the real plugins. TestMain
// installs the plugins (hack/install-cni-plugins.sh) when they are missing,
// keeps libcni's result cache in a temp dir instead of /var/lib/cni, and puts
// back what the plugins change on the host for everyone: ip_forward (the
// bridge plugin's isGateway turns it on) and portmap's shared top-level
// chains when they did not exist before and are empty.

var (
	// testBinDir holds the plugins; "" when they are unavailable, and then
	// skipReason says why.
	testBinDir string
	skipReason string
)

var requiredPlugins = []string{"bridge", "host-local", "loopback", "portmap"}

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	if dir := os.Getenv(fakePluginEnv); dir != "" {
		return fakePlugin(dir, filepath.Base(os.Args[0]))
	}
	cacheDir, err := os.MkdirTemp("", "netcni-cache-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer func() { _ = os.RemoveAll(cacheDir) }()
	cnilibrary.CacheDir = cacheDir

	if os.Getuid() != 0 {
		skipReason = "needs root: creates network namespaces, a bridge and iptables rules"
		return m.Run()
	}
	testBinDir, skipReason = ensurePlugins()

	forward, _ := os.ReadFile(ipForwardPath)
	sharedBefore := sharedChains()
	defer func() {
		// Another package's pods (test/e2e) may be up meanwhile and need
		// both: leave them while any pod's chain is left in the nat table.
		if otherPodsUp() {
			return
		}
		if len(forward) > 0 {
			if now, _ := os.ReadFile(ipForwardPath); !bytes.Equal(now, forward) {
				_ = os.WriteFile(ipForwardPath, forward, 0o644)
			}
		}
		removeNewSharedChains(sharedBefore)
	}()
	return m.Run()
}

const ipForwardPath = "/proc/sys/net/ipv4/ip_forward"

// ensurePlugins returns the dir holding the plugins, installing them into
// the default dir when some are missing.
func ensurePlugins() (dir, reason string) {
	dir = os.Getenv("CNI_BIN_DIR")
	if dir == "" {
		dir = DefaultBinDir
	}
	_, iptErr := exec.LookPath("iptables")
	if missingPlugins(dir) == nil && iptErr == nil {
		return dir, ""
	}
	script, err := filepath.Abs("../../hack/install-cni-plugins.sh")
	if err != nil {
		return "", err.Error()
	}
	cmd := exec.Command("bash", script, dir)
	cmd.Env = append(os.Environ(), "GO="+goBinary())
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	fmt.Fprintf(os.Stderr, "netcni tests: installing CNI plugins: %s\n", cmd)
	if err := cmd.Run(); err != nil {
		return "", fmt.Sprintf("CNI plugins missing from %s and %s failed: %v", dir, script, err)
	}
	if missing := missingPlugins(dir); missing != nil {
		return "", fmt.Sprintf("CNI plugins %v missing from %s", missing, dir)
	}
	if _, err := exec.LookPath("iptables"); err != nil {
		return "", "iptables missing (the portmap plugin needs it)"
	}
	return dir, ""
}

func missingPlugins(dir string) []string {
	var missing []string
	for _, p := range requiredPlugins {
		if fi, err := os.Stat(filepath.Join(dir, p)); err != nil || fi.Mode()&0o111 == 0 {
			missing = append(missing, p)
		}
	}
	return missing
}

// goBinary finds go for the install script: on PATH, else where `make`
// puts it.
func goBinary() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return "/usr/local/go/bin/go"
}

// Shared chains portmap creates once for every pod and never removes.
var portmapShared = []string{"CNI-HOSTPORT-DNAT", "CNI-HOSTPORT-SETMARK", "CNI-HOSTPORT-MASQ"}

func sharedChains() map[string]bool {
	out, err := exec.Command("iptables-save", "-t", "nat").Output()
	if err != nil {
		return nil
	}
	have := map[string]bool{}
	for _, c := range portmapShared {
		have[c] = bytes.Contains(out, []byte(":"+c+" "))
	}
	return have
}

// otherPodsUp reports whether the nat table holds a chain of some pod
// (CNI-<hash> of ipMasq, CNI-DN-<hash> of portmap).
func otherPodsUp() bool {
	out, err := exec.Command("iptables-save", "-t", "nat").Output()
	if err != nil {
		return true
	}
	for _, line := range strings.Split(string(out), "\n") {
		if !strings.HasPrefix(line, ":CNI-") {
			continue
		}
		chain := strings.Fields(line[1:])[0]
		if !slices.Contains(portmapShared, chain) {
			return true
		}
	}
	return false
}

// removeNewSharedChains removes portmap's shared chains that did not exist
// before the tests, when no rule of any pod is left in them.
func removeNewSharedChains(before map[string]bool) {
	if before == nil {
		return
	}
	out, err := exec.Command("iptables-save", "-t", "nat").Output()
	if err != nil {
		return
	}
	var rules, chains []string
	for _, c := range portmapShared {
		if before[c] || !bytes.Contains(out, []byte(":"+c+" ")) {
			continue
		}
		chains = append(chains, c)
		for _, line := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(line, "-A CNI-HOSTPORT-DNAT ") {
				return // a pod still forwards ports
			}
			if strings.HasPrefix(line, "-A ") && strings.HasSuffix(line, " -j "+c) {
				rules = append(rules, line)
			}
		}
	}
	if err := deleteNATRules(rules, chains); err != nil {
		fmt.Fprintf(os.Stderr, "netcni tests: remove portmap's shared chains: %v\n", err)
	}
}

// deleteNATRules deletes rules (as iptables-save prints them) and then the
// chains from the nat table, in one iptables-restore transaction.
func deleteNATRules(rules, chains []string) error {
	if len(rules) == 0 && len(chains) == 0 {
		return nil
	}
	var b strings.Builder
	b.WriteString("*nat\n")
	for _, r := range rules {
		b.WriteString("-D" + strings.TrimPrefix(r, "-A") + "\n")
	}
	for _, c := range chains {
		b.WriteString("-F " + c + "\n")
	}
	for _, c := range chains {
		b.WriteString("-X " + c + "\n")
	}
	b.WriteString("COMMIT\n")
	cmd := exec.Command("iptables-restore", "--noflush")
	cmd.Stdin = strings.NewReader(b.String())
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("iptables-restore: %w: %s", err, out)
	}
	return nil
}
