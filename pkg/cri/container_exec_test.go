package cri

import (
	"bytes"
	"testing"
)

// TestCapExecOutput: stdout and stderr together keep at most the limit,
// each at least half of it when both are over.
func TestCapExecOutput(t *testing.T) {
	b := func(n int) []byte { return bytes.Repeat([]byte("x"), n) }
	for _, tc := range []struct {
		out, err, wantOut, wantErr int
	}{
		{6, 3, 6, 3},
		{10, 0, 10, 0},
		{20, 0, 10, 0},
		{0, 20, 0, 10},
		{3, 20, 3, 7},
		{20, 2, 8, 2},
		{20, 20, 5, 5},
		{21, 21, 5, 5},
	} {
		o, e := capExecOutput(b(tc.out), b(tc.err), 10)
		if len(o) != tc.wantOut || len(e) != tc.wantErr {
			t.Errorf("%d+%d: got %d+%d, want %d+%d", tc.out, tc.err, len(o), len(e), tc.wantOut, tc.wantErr)
		}
	}
	if o, e := capExecOutput(b(10<<20), b(10<<20), maxExecSyncOutput); len(o)+len(e) != maxExecSyncOutput {
		t.Errorf("10 MiB + 10 MiB: %d bytes", len(o)+len(e))
	}
}
