package pods

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	podsv0 "github.com/aurae-runtime/aurae-cri/api/pods/v0"
	"github.com/aurae-runtime/aurae-cri/pkg/errmap"
)

// UpdateContainerResources implements PodService.UpdateContainerResources.
func (s *Service) UpdateContainerResources(ctx context.Context, req *podsv0.UpdateContainerResourcesRequest) (*podsv0.UpdateContainerResourcesResponse, error) {
	if err := s.updateResources(ctx, req.GetContainerId(), req.GetLinuxResources()); err != nil {
		return nil, errmap.ToGRPC(err)
	}
	return &podsv0.UpdateContainerResourcesResponse{}, nil
}

// updateResources applies new resources with `runc update -r` and keeps
// them in the bundle's config.json, so that a later exec sees the same.
func (s *Service) updateResources(ctx context.Context, id string, raw []byte) error {
	if err := validID("container", id); err != nil {
		return err
	}
	var res specs.LinuxResources
	if err := json.Unmarshal(raw, &res); err != nil {
		return fmt.Errorf("update container %q: resources: %w: %w", id, err, errdefs.ErrInvalidArgument)
	}
	c, err := s.lookupContainer(id)
	if err != nil {
		return err
	}
	if isDone(c.done) {
		return fmt.Errorf("update container %q: not running: %w", id, errdefs.ErrFailedPrecondition)
	}
	bundle := s.bundleDir(id)
	f, err := os.CreateTemp(bundle, "resources-*.json")
	if err != nil {
		return fmt.Errorf("update container %q: %w", id, err)
	}
	defer func() { _ = os.Remove(f.Name()) }()
	if err := json.NewEncoder(f).Encode(&res); err != nil {
		_ = f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if _, err := s.runRuntime(ctx, "update", "--resources", f.Name(), id); err != nil {
		return fmt.Errorf("update container %q: %w", id, err)
	}
	if err := updateBundleResources(bundle, &res); err != nil {
		return fmt.Errorf("update container %q: %w", id, err)
	}
	s.log.Info("container resources updated", "pod", c.podID, "container", id)
	return nil
}

func updateBundleResources(bundle string, res *specs.LinuxResources) error {
	p := filepath.Join(bundle, "config.json")
	b, err := os.ReadFile(p)
	if err != nil {
		return err
	}
	var sp specs.Spec
	if err := json.Unmarshal(b, &sp); err != nil {
		return err
	}
	if sp.Linux == nil {
		sp.Linux = &specs.Linux{}
	}
	sp.Linux.Resources = res
	if b, err = json.Marshal(&sp); err != nil {
		return err
	}
	// Written aside and renamed: a crash leaves the old or the new file.
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, p)
}

// reopenTimeout bounds the wait for conmon to reopen a log.
const reopenTimeout = 5 * time.Second

// ReopenContainerLog implements PodService.ReopenContainerLog.
func (s *Service) ReopenContainerLog(ctx context.Context, req *podsv0.ReopenContainerLogRequest) (*podsv0.ReopenContainerLogResponse, error) {
	if err := s.reopenLog(req.GetContainerId()); err != nil {
		return nil, errmap.ToGRPC(err)
	}
	return &podsv0.ReopenContainerLogResponse{}, nil
}

// reopenLog asks conmon, through the ctl fifo in the bundle, to reopen the
// log file ("2 0 0": conmon's REOPEN_LOGS_EVENT), as CRI-O does.
func (s *Service) reopenLog(id string) error {
	if err := validID("container", id); err != nil {
		return err
	}
	c, err := s.lookupContainer(id)
	if err != nil {
		return err
	}
	if isDone(c.done) {
		return fmt.Errorf("reopen log of %q: container is not running: %w", id, errdefs.ErrFailedPrecondition)
	}
	if c.record().LogStream {
		return fmt.Errorf("reopen log of %q: its log is streamed (ContainerLog); the client reopens its own file: %w", id, errdefs.ErrFailedPrecondition)
	}
	logPath := c.record().LogPath
	if logPath == "" {
		logPath = filepath.Join(s.bundleDir(id), "container.log")
	}
	var before unix.Stat_t
	_ = unix.Stat(logPath, &before)
	// O_NONBLOCK: fails at once (ENXIO) instead of hanging when the
	// monitor is gone and nobody reads the fifo.
	f, err := os.OpenFile(filepath.Join(s.bundleDir(id), "ctl"), os.O_WRONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		return fmt.Errorf("reopen log of %q: monitor control: %w", id, err)
	}
	defer f.Close()
	if _, err := fmt.Fprintf(f, "%d %d %d\n", 2, 0, 0); err != nil {
		return fmt.Errorf("reopen log of %q: %w", id, err)
	}
	// conmon reopens asynchronously, by writing a new file and renaming it
	// over the log path: wait for the new inode, as CRI-O waits.
	deadline := time.Now().Add(reopenTimeout)
	for {
		var now unix.Stat_t
		if err := unix.Stat(logPath, &now); err == nil && now.Ino != before.Ino {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("reopen log of %q: %s was not reopened within %s", id, logPath, reopenTimeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
	s.log.Info("container log reopened", "pod", c.podID, "container", id)
	return nil
}
