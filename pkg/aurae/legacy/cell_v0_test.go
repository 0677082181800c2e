package legacy

import (
	"testing"

	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/proto"

	cellsv0 "github.com/aurae-runtime/aurae-cri/api/cells/v0"
	runtimecellv0 "github.com/aurae-runtime/aurae-cri/api/runtime/cell/v0"
)

func TestCellOf(t *testing.T) {
	got, err := cellOf(&runtimecellv0.Cell{Name: "a", CpuCpus: "0-1", CpuShares: 200, CpuMems: "0", CpuQuota: 50000,
		NsShareMount: true, NsShareUts: true, NsShareIpc: true, NsSharePid: true, NsShareNet: true, NsShareCgroup: true})
	if err != nil {
		t.Fatal(err)
	}
	want := &cellsv0.Cell{Name: "a", IsolateCgroup: true,
		Cpu:    &cellsv0.CpuController{Weight: proto.Uint64(200), Max: proto.Int64(50000)},
		Cpuset: &cellsv0.CpusetController{Cpus: proto.String("0-1"), Mems: proto.String("0")}}
	if !proto.Equal(got, want) {
		t.Errorf("cellOf(all shared) = %v, want %v", got, want)
	}
	got, err = cellOf(&runtimecellv0.Cell{Name: "b"})
	if err != nil {
		t.Fatal(err)
	}
	if want := (&cellsv0.Cell{Name: "b", IsolateProcess: true, IsolateNetwork: true, IsolateCgroup: true}); !proto.Equal(got, want) {
		t.Errorf("cellOf(nothing shared) = %v, want %v", got, want)
	}
	for _, c := range []*runtimecellv0.Cell{nil, {Name: "c", NsShareUts: true}, {Name: "d", NsShareMount: true, NsShareUts: true, NsShareIpc: true}} {
		if _, err := cellOf(c); !errdefs.IsInvalidArgument(err) {
			t.Errorf("cellOf(%v) = %v, want InvalidArgument", c, err)
		}
	}
}
