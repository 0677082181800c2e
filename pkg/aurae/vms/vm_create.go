package vms

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	vmsv0 "github.com/aurae-runtime/aurae-cri/api/vms/v0"
	"github.com/aurae-runtime/aurae-cri/pkg/hypervisor"
)

// create validates the spec, reserves the id, then makes the VM's dir and
// record. A refused request leaves nothing behind.
func (s *Service) create(ctx context.Context, m *vmsv0.VirtualMachine) (_ string, retErr error) {
	if err := validSpec(m); err != nil {
		return "", fmt.Errorf("create vm: %w", err)
	}
	if err := s.validCgroupPath(m.GetCgroupPath()); err != nil {
		return "", fmt.Errorf("create vm: %w", err)
	}
	id := m.GetId()
	dir := s.vmDir(id)
	if err := hypervisor.CheckDir(dir); err != nil {
		return "", fmt.Errorf("create vm %q: %w", id, err)
	}
	v := &vm{id: id, spec: proto.Clone(m).(*vmsv0.VirtualMachine), dir: dir, reserved: true}
	v.st = vmStatus{State: vmsv0.VmState_VM_STATE_CREATED, CreatedAt: time.Now().UTC()}

	s.mu.Lock()
	if _, ok := s.vms[id]; ok {
		s.mu.Unlock()
		return "", fmt.Errorf("vm %q: %w", id, errdefs.ErrAlreadyExists)
	}
	s.vms[id] = v
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if retErr != nil {
			delete(s.vms, id)
		} else {
			v.reserved = false
		}
	}()

	// A dir without a record is a leftover of a crash between the two.
	if err := os.RemoveAll(dir); err != nil {
		return "", fmt.Errorf("create vm %q: %w", id, err)
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		return "", fmt.Errorf("create vm %q: %w", id, err)
	}
	defer func() {
		if retErr != nil {
			_ = os.RemoveAll(dir)
		}
	}()
	spec, err := protojson.MarshalOptions{Multiline: true}.Marshal(v.spec)
	if err != nil {
		return "", err
	}
	if err := writeFileAtomic(filepath.Join(dir, "config.json"), spec); err != nil {
		return "", fmt.Errorf("create vm %q: %w", id, err)
	}
	if err := s.store.put(id, record{Spec: v.spec, Status: v.st}); err != nil {
		return "", fmt.Errorf("create vm %q: %w", id, err)
	}
	s.log.InfoContext(ctx, "vm created", "vm", id, "vcpus", m.GetVcpuCount(), "mem_mb", m.GetMemSizeMb(), "kernel", m.GetKernelImgPath())
	return id, nil
}

// writeFileAtomic writes a file through a temp file and a rename.
func writeFileAtomic(path string, b []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+"-*")
	if err != nil {
		return err
	}
	_, werr := f.Write(b)
	cerr := f.Close()
	if err := errors.Join(werr, cerr); err != nil {
		_ = os.Remove(f.Name())
		return err
	}
	if err := os.Rename(f.Name(), path); err != nil {
		_ = os.Remove(f.Name())
		return err
	}
	return nil
}
