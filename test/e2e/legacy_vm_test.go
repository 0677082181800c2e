package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	discoveryv0 "github.com/aurae-runtime/aurae-cri/api/discovery/v0"
	metaapi "github.com/aurae-runtime/aurae-cri/api/meta"
	runtimeapi "github.com/aurae-runtime/aurae-cri/api/runtime"
	vmsv0 "github.com/aurae-runtime/aurae-cri/api/vms/v0"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/client"
)

// TestLegacyRunVirtualMachineRefusals: without a guest image, or asked to
// pull one, RunVirtualMachine answers FailedPrecondition naming what is
// missing, and leaves no VM.
func TestLegacyRunVirtualMachineRefusals(t *testing.T) {
	empty := t.TempDir()
	a := startAuraed(t, "--vm-image-dir", empty)
	ctx := testContext(t)
	core := runtimeapi.NewCoreClient(a.Client().Conn)
	_, err := core.RunVirtualMachine(ctx, &runtimeapi.VirtualMachine{Name: "vm1"})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), empty+"/vmlinux is missing") {
		t.Fatalf("RunVirtualMachine without a guest image = %v, want FailedPrecondition naming %s/vmlinux", err, empty)
	}
	_, err = core.RunVirtualMachine(ctx, &runtimeapi.VirtualMachine{Name: "vm1", Image: "registry.example/vm.qcow2"})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "pulls no VM images") {
		t.Fatalf("RunVirtualMachine of an image to pull = %v, want FailedPrecondition", err)
	}
	if _, err := core.RunVirtualMachine(ctx, &runtimeapi.VirtualMachine{}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("RunVirtualMachine without a name = %v, want InvalidArgument", err)
	}
	if list, err := a.Client().Vms.List(ctx, &vmsv0.VmServiceListRequest{}); err != nil || len(list.GetMachines()) != 0 {
		t.Fatalf("VMs after the refusals: %v, %v", list, err)
	}
}

// TestLegacyRunVirtualMachine boots the guest image through runtime.Core
// and reaches the nested auraed at the address it answers.
func TestLegacyRunVirtualMachine(t *testing.T) {
	requireVMImage(t)
	a := startAuraed(t, "--vm-image-dir", vmImageDir)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if _, err := a.Client().Vms.Free(ctx, &vmsv0.VmServiceFreeRequest{VmId: "legacy-vm"}); err != nil && status.Code(err) != codes.NotFound {
			t.Errorf("free the VM: %v", err)
		}
	})
	resp, err := runtimeapi.NewCoreClient(a.Client().Conn).RunVirtualMachine(ctx, &runtimeapi.VirtualMachine{Meta: &metaapi.AuraeMeta{Name: "legacy-vm"}})
	if err != nil {
		t.Fatalf("RunVirtualMachine: %v", err)
	}
	addr, ok := strings.CutPrefix(resp.GetMeta().GetMessage(), "auraed at ")
	if resp.GetStatus() != metaapi.Status_STATUS_ACTIVE || resp.GetMeta().GetName() != "legacy-vm" || !ok {
		t.Fatalf("RunVirtualMachine = %v", resp)
	}
	// The VM has booted (its console spoke); its auraed answers some time
	// later under a loaded TCG: redial.
	var c *client.Client
	for {
		c, err = client.Dial(ctx, addr)
		if err == nil || ctx.Err() != nil {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("dial the VM's auraed at %s: %v", addr, err)
	}
	defer func() { _ = c.Close() }()
	if d, err := c.Discovery.Discover(ctx, &discoveryv0.DiscoverRequest{}); err != nil || !d.GetHealthy() {
		t.Fatalf("the VM's auraed: %v, %v", d, err)
	}
}

// TestLegacySpawn boots a nested instance through runtime.Core/Spawn; its
// auraed answers; once it exits (stopped through the VmService) auraed
// removes it.
func TestLegacySpawn(t *testing.T) {
	requireVMImage(t)
	a := startAuraed(t, "--vm-image-dir", vmImageDir)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	resp, err := runtimeapi.NewCoreClient(a.Client().Conn).Spawn(ctx, &runtimeapi.SpawnRequest{})
	if err != nil {
		t.Fatalf("Spawn: %v", err)
	}
	id := resp.GetVmId()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if _, err := a.Client().Vms.Free(ctx, &vmsv0.VmServiceFreeRequest{VmId: id}); err != nil && status.Code(err) != codes.NotFound {
			t.Errorf("free the VM: %v", err)
		}
	})
	if !strings.HasPrefix(id, "spawn-") || resp.GetAuraedAddress() == "" {
		t.Fatalf("Spawn = %v", resp)
	}
	var c *client.Client
	for {
		c, err = client.Dial(ctx, resp.GetAuraedAddress())
		if err == nil || ctx.Err() != nil {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("dial the spawned auraed: %v", err)
	}
	_, err = c.Discovery.Discover(ctx, &discoveryv0.DiscoverRequest{})
	_ = c.Close()
	if err != nil {
		t.Fatalf("the spawned auraed: %v", err)
	}
	if _, err := a.Client().Vms.Stop(ctx, &vmsv0.VmServiceStopRequest{VmId: id}); err != nil {
		t.Fatalf("stop the spawned VM: %v", err)
	}
	waitLogRecord(t, a, "spawned instance exited and was removed", 1)
	list, err := a.Client().Vms.List(ctx, &vmsv0.VmServiceListRequest{})
	if err != nil || len(list.GetMachines()) != 0 {
		t.Fatalf("VMs after the spawned one exited: %v, %v", list, err)
	}
}
