package pods

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
)

func TestDefaultConmon(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "conmon")
	if err := os.WriteFile(exe, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	plain := filepath.Join(dir, "not-executable")
	if err := os.WriteFile(plain, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, pinned, want string
	}{
		{"installed", exe, exe},
		{"missing", filepath.Join(dir, "missing"), "conmon"},
		{"not executable", plain, "conmon"},
		{"a directory", dir, "conmon"},
	} {
		if got := defaultConmon(tc.pinned); got != tc.want {
			t.Errorf("%s: defaultConmon(%q) = %q, want %q", tc.name, tc.pinned, got, tc.want)
		}
	}
	want := "conmon"
	if fi, err := os.Stat(PinnedConmon); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
		want = PinnedConmon
	}
	if got := DefaultConmon(); got != want {
		t.Errorf("DefaultConmon() = %q, want %q", got, want)
	}
}

func TestLogConmonSaysWhichAndWhy(t *testing.T) {
	for _, tc := range []struct {
		name       string
		configured bool
		path       string
		source     string
		reason     bool
	}{
		{"configured", true, "/usr/local/bin/conmon", "configured", false},
		{"pinned", false, PinnedConmon, "pinned", false},
		{"fallback", false, "/usr/bin/conmon", "PATH", true},
	} {
		var buf bytes.Buffer
		logConmon(context.Background(), slog.New(slog.NewJSONHandler(&buf, nil)), tc.configured, tc.path)
		var rec map[string]any
		if err := json.Unmarshal(buf.Bytes(), &rec); err != nil {
			t.Fatalf("%s: one JSON line expected, got %q: %v", tc.name, buf.String(), err)
		}
		if rec["msg"] != "container monitor" || rec["path"] != tc.path || rec["source"] != tc.source {
			t.Errorf("%s: %v", tc.name, rec)
		}
		if _, ok := rec["reason"]; ok != tc.reason {
			t.Errorf("%s: reason present %v, want %v: %v", tc.name, ok, tc.reason, rec)
		}
	}
}
