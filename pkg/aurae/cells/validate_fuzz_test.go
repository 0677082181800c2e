package cells

import (
	"path"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/proto"

	cellsv0 "github.com/aurae-runtime/aurae-cri/api/cells/v0"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/cgroup"
)

// The fuzz targets of the Cell service's request checks: what Allocate and
// Start check before any side effect, on requests decoded from the
// fuzzer's bytes with names and the command from its strings. They touch
// nothing (limitsOf and parseCommand only read sysfs and PATH). Seeds:
// testdata/fuzz/<target>/; `make fuzz` runs them.

// checkCellName: an accepted name is a clean relative path of valid
// segments, none of them auraed's own (".pods") or a climb.
func checkCellName(t *testing.T, name string) {
	t.Helper()
	if name == "" || path.IsAbs(name) || path.Clean(name) != name || len(name) > maxNameLen || strings.Count(name, "/") >= maxDepth {
		t.Fatalf("cell name %q accepted", name)
	}
	for _, seg := range strings.Split(name, "/") {
		if seg == "" || seg[0] == '.' || seg[0] == '-' || len(seg) > maxSegmentLen || strings.ContainsAny(seg, " \x00\n") {
			t.Fatalf("cell name %q accepted with segment %q", name, seg)
		}
	}
}

func FuzzCellAllocate(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte, name string) {
		req := &cellsv0.CellServiceAllocateRequest{}
		_ = proto.Unmarshal(data, req)
		if name != "" {
			if req.Cell == nil {
				req.Cell = &cellsv0.Cell{}
			}
			req.Cell.Name = name
		}
		spec := req.GetCell()
		err := validCellName(spec.GetName())
		var l cgroup.Limits
		if err == nil {
			l, err = limitsOf(spec)
		}
		if err != nil {
			if !errdefs.IsInvalidArgument(err) && !errdefs.IsFailedPrecondition(err) {
				t.Fatalf("refusal of no clear kind: %v", err)
			}
			return
		}
		checkCellName(t, spec.GetName())
		if w := l.CPUWeight; w != nil && (*w < 1 || *w > 10000) {
			t.Fatalf("cpu weight %d accepted", *w)
		}
		if p := l.CPUPeriod; p != nil && (*p < 1000 || *p > 1000000) {
			t.Fatalf("cpu period %d accepted", *p)
		}
		if m := l.CPUMax; m != nil && *m < 1000 {
			t.Fatalf("cpu max %d accepted", *m)
		}
		for _, m := range []*int64{l.MemoryMin, l.MemoryLow, l.MemoryHigh, l.MemoryMax} {
			if m != nil && *m < 0 {
				t.Fatalf("memory limit %d accepted", *m)
			}
		}
		for _, list := range []*string{l.Cpus, l.Mems} {
			if list != nil && (*list == "" || strings.Trim(*list, "0123456789,-") != "") {
				t.Fatalf("cpuset list %q accepted", *list)
			}
		}
	})
}

func FuzzCellStart(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte, cellName, exeName, command string) {
		req := &cellsv0.CellServiceStartRequest{}
		_ = proto.Unmarshal(data, req)
		if cellName != "" {
			req.CellName = &cellName
		}
		if exeName != "" || command != "" {
			if req.Executable == nil {
				req.Executable = &cellsv0.Executable{}
			}
			if exeName != "" {
				req.Executable.Name = exeName
			}
			if command != "" {
				req.Executable.Command = command
			}
		}
		// As start checks them, up to the cell lookup.
		err := validCellName(req.GetCellName())
		if err == nil && req.CellName == nil {
			t.Fatal("an empty cell name passed validCellName")
		}
		if err == nil {
			err = validName(req.GetExecutable().GetName())
		}
		var argv []string
		var bin string
		if err == nil {
			argv, bin, err = parseCommand(req.GetExecutable().GetCommand())
		}
		if err != nil {
			if !errdefs.IsInvalidArgument(err) {
				t.Fatalf("refusal that is not InvalidArgument: %v", err)
			}
			return
		}
		checkCellName(t, req.GetCellName())
		checkCellName(t, req.GetExecutable().GetName())
		if strings.Contains(req.GetExecutable().GetName(), "/") {
			t.Fatalf("executable name %q accepted", req.GetExecutable().GetName())
		}
		if len(argv) == 0 || !filepath.IsAbs(bin) {
			t.Fatalf("command %q accepted as %q (program %q)", req.GetExecutable().GetCommand(), argv, bin)
		}
		for _, a := range argv {
			if strings.ContainsRune(a, 0) {
				t.Fatalf("argument %q with a NUL accepted", a)
			}
		}
	})
}
