package main

import (
	"bytes"
	"context"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestParseInterleaved(t *testing.T) {
	for _, tc := range []struct {
		args    []string
		pos     []string
		verbose bool
	}{
		{[]string{"a", "-v", "b"}, []string{"a", "b"}, true},
		{[]string{"-v", "a"}, []string{"a"}, true},
		{[]string{"a", "--", "ls", "-v"}, []string{"a", "ls", "-v"}, false},
		{nil, nil, false},
	} {
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		v := fs.Bool("v", false, "")
		pos, err := parseInterleaved(fs, tc.args)
		if err != nil || !slices.Equal(pos, tc.pos) || *v != tc.verbose {
			t.Errorf("parseInterleaved(%q) = %q, -v %v, %v; want %q, -v %v", tc.args, pos, *v, err, tc.pos, tc.verbose)
		}
	}
}

func TestDialTarget(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("HOME", dir)
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	target := func(address, config string) (string, int, error) {
		a := &app{globals: globals{address: address, config: config}}
		addr, opts, err := a.dialTarget()
		return addr, len(opts), err
	}
	// No config anywhere (HOME is empty; /etc/aurae/config is not made by tests).
	if _, err := os.Stat("/etc/aurae/config"); err != nil {
		if addr, n, err := target("", ""); addr != defaultAddress || n != 0 || err != nil {
			t.Errorf("no config: %s, %d options, %v", addr, n, err)
		}
	}
	// ~/.aurae/config with a TCP socket and the certificates.
	write(".aurae/config", "[auth]\nca_crt = \"~/pki/ca.crt\"\nclient_crt = \"/c.crt\"\nclient_key = \"/c.key\"\n\n[system]\nsocket = \"127.0.0.1:8443\"\n")
	if addr, n, err := target("", ""); addr != "tcp://127.0.0.1:8443" || n != 1 || err != nil {
		t.Errorf("home config: %s, %d options, %v", addr, n, err)
	}
	cfg, err := loadConfig("")
	if err != nil || cfg.Auth.CACrt != filepath.Join(dir, "pki/ca.crt") {
		t.Errorf("~ not expanded: %+v, %v", cfg, err)
	}
	// --address wins; a path is a unix socket, reached without TLS.
	if addr, n, err := target("/run/x.sock", ""); addr != "unix:///run/x.sock" || n != 0 || err != nil {
		t.Errorf("--address: %s, %d options, %v", addr, n, err)
	}
	// TCP without certificates is refused before dialing.
	bare := write("bare", "[system]\nsocket = \"tcp://h:1\"\n")
	if _, _, err := target("", bare); err == nil || !strings.Contains(err.Error(), "mutual TLS") {
		t.Errorf("TCP without [auth]: %v", err)
	}
	for _, bad := range []string{"[auth]\nunknown = 1\n", "not toml ["} {
		if _, _, err := target("", write("bad", bad)); err == nil {
			t.Errorf("config %q accepted", bad)
		}
	}
	if _, _, err := target("", filepath.Join(dir, "missing")); err == nil {
		t.Error("a missing --config was accepted")
	}
}

// TestUsageExitCodes runs aer without a daemon: what fails before any call.
func TestUsageExitCodes(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
		out  string // on stdout
		err  string // on stderr
	}{
		{[]string{"--help"}, exitOK, "-address", ""},
		{[]string{"discovery", "--help"}, exitOK, "-timeout duration", ""},
		{[]string{"os", "processes", "--help"}, exitOK, "-nodes string", ""},
		{nil, exitUsage, "", "Usage: aer"},
		{[]string{"nope"}, exitUsage, "", `unknown resource "nope"`},
		{[]string{"cells"}, exitUsage, "", "Verbs:"},
		{[]string{"cells", "--help"}, exitOK, "allocate NAME", ""},
		{[]string{"cells", "grow"}, exitUsage, "", `unknown verb "grow"`},
		{[]string{"cells", "start", "--help"}, exitOK, "Usage: aer cells start CELL NAME COMMAND [FLAGS]", ""},
		{[]string{"cells", "free"}, exitUsage, "", "want arguments NAME, got 0"},
		{[]string{"cells", "list", "--bogus"}, exitUsage, "", "see aer cells list --help"},
		{[]string{"os", "processes", "-o", "yaml"}, exitUsage, "", `-o "yaml"`},
		{[]string{"os", "stats", "--driver", "docker", "--address", "unix:///nonexistent/aurae.sock"}, exitFail, "", "connect to unix:///nonexistent/aurae.sock"},
	} {
		var stdout, stderr bytes.Buffer
		code := run(context.Background(), tc.args, &stdout, &stderr)
		if code != tc.code || !strings.Contains(stdout.String(), tc.out) || !strings.Contains(stderr.String(), tc.err) {
			t.Errorf("aer %q: exit %d, stdout %q, stderr %q; want exit %d, %q on stdout, %q on stderr", tc.args, code, stdout.String(), stderr.String(), tc.code, tc.out, tc.err)
		}
	}
}
