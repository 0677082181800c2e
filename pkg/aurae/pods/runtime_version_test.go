package pods_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"

	"github.com/aurae-runtime/aurae-cri/pkg/aurae/pods"
)

func TestParseRuntimeVersion(t *testing.T) {
	for _, tc := range []struct {
		out  string
		want pods.RuntimeVersion
	}{
		{"runc version 1.4.4\ncommit: v1.4.4\nspec: 1.3.0\ngo: go1.26.8\nlibseccomp: 2.5.4\n", pods.RuntimeVersion{Name: "runc", Major: 1, Minor: 4, Patch: 4}},
		{"runc version 1.1.5+ds1\ncommit: 1.1.5+ds1-1+deb12u1\n", pods.RuntimeVersion{Name: "runc", Major: 1, Minor: 1, Patch: 5, Suffix: "+ds1"}},
		{"runc version 1.5.0-rc.2\n", pods.RuntimeVersion{Name: "runc", Major: 1, Minor: 5, Suffix: "-rc.2"}},
		{"crun version 1.8.1\ncommit: f8a096be060b22ccd3d5f3ebe44108517fbf6c30\n+SYSTEMD +SELINUX +SECCOMP\n", pods.RuntimeVersion{Name: "crun", Major: 1, Minor: 8, Patch: 1}},
		{"some banner\ncrun version 1.19\n", pods.RuntimeVersion{Name: "crun", Major: 1, Minor: 19}},
	} {
		got, err := pods.ParseRuntimeVersion(tc.out)
		if err != nil {
			t.Errorf("%q: %v", tc.out, err)
			continue
		}
		if got != tc.want {
			t.Errorf("%q: got %+v, want %+v", tc.out, got, tc.want)
		}
	}
	for _, bad := range []string{"", "runc\n", "runc version\n", "runc version one.two\n", "runc version 1\n", "runc version 1.2.3.4\n"} {
		if v, err := pods.ParseRuntimeVersion(bad); err == nil {
			t.Errorf("%q: parsed as %+v, want an error", bad, v)
		}
	}
}

func TestParseRuntimeSpecVersion(t *testing.T) {
	for out, want := range map[string]string{
		"runc version 1.4.4\ncommit: v1.4.4\nspec: 1.3.0\ngo: go1.26.8\n":                           "1.3.0",
		"crun version 1.8.1\ncommit: f8a096be\nrundir: /run/crun\nspec: 1.0.0\n+SYSTEMD +SECCOMP\n": "1.0.0",
		"runc version 1.1.5+ds1\ncommit: 1.1.5+ds1-1+deb12u1\nspec: 1.0.2-dev\n":                    "1.0.2-dev",
		"runc version 1.4.4\n":                  "",
		"runc version 1.4.4\nspec: something\n": "",
	} {
		if got := pods.ParseRuntimeSpecVersion(out); got != want {
			t.Errorf("%q: %q, want %q", out, got, want)
		}
	}
}

func TestRuntimeVersionLess(t *testing.T) {
	v := func(s string) pods.RuntimeVersion {
		t.Helper()
		r, err := pods.ParseRuntimeVersion("runc version " + s)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	for _, tc := range []struct {
		a, b string
		less bool
	}{
		{"1.1.5+ds1", "1.3.0", true},
		{"1.2.9", "1.3.0", true},
		{"1.3.0-rc.1", "1.3.0", true},
		{"1.3.0", "1.3.0", false},
		{"1.3.0+dev", "1.3.0", false},
		{"1.4.4", "1.3.0", false},
		{"2.0.0", "1.9.9", false},
		{"0.9.9", "1.0.0", true},
	} {
		if got := v(tc.a).Less(v(tc.b)); got != tc.less {
			t.Errorf("%s < %s = %v, want %v", tc.a, tc.b, got, tc.less)
		}
	}
	if pods.MinRuntimeVersion.String() != "1.3.0" {
		t.Errorf("floor %s, want 1.3.0", pods.MinRuntimeVersion)
	}
}

// fakeRuntime writes a script that answers --version with out.
func fakeRuntime(t *testing.T, out string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "runc")
	if err := os.WriteFile(p, []byte("#!/bin/sh\ncat <<'EOF'\n"+out+"EOF\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestCheckRuntime(t *testing.T) {
	ctx := context.Background()
	old := fakeRuntime(t, "runc version 1.1.5+ds1\ncommit: 1.1.5+ds1-1+deb12u1\n")
	if _, err := pods.CheckRuntime(ctx, old, false); !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "--allow-old-oci-runtime") {
		t.Errorf("runc 1.1.5: %v, want a failed precondition naming --allow-old-oci-runtime", err)
	}
	rc, err := pods.CheckRuntime(ctx, old, true)
	if err != nil || rc.Version.Minor != 1 {
		t.Errorf("runc 1.1.5 allowed: %+v, %v", rc, err)
	}
	if rc, err := pods.CheckRuntime(ctx, fakeRuntime(t, "runc version 1.4.4\n"), false); err != nil || rc.Version.String() != "1.4.4" {
		t.Errorf("runc 1.4.4: %+v, %v", rc, err)
	}
	if _, err := pods.CheckRuntime(ctx, fakeRuntime(t, "garbage\n"), false); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("unreadable version: %v, want a failed precondition", err)
	}
	if _, err := pods.CheckRuntime(ctx, filepath.Join(t.TempDir(), "missing"), true); err == nil {
		t.Error("missing runtime: no error")
	}
}
