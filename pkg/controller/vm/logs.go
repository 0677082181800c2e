package vm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/containerd/errdefs"

	podsv0 "github.com/aurae-runtime/aurae-cri/api/pods/v0"
)

// logRecPath is a container's log position record, in its pod's dir (not
// in the shared dir: the guest never sees it).
func logRecPath(podDir, cid string) string {
	return filepath.Join(podDir, "logs", cid+".json")
}

// openLog follows a container's log through its pod's current guest
// client (the one after a redial too).
func (c *Controller) openLog(podID string) openLogFunc {
	return func(ctx context.Context, cid string, offset uint64) (logStream, error) {
		c.mu.Lock()
		var g *guest
		if p := c.pods[podID]; p != nil {
			g = p.guest
		}
		c.mu.Unlock()
		if g == nil {
			return nil, fmt.Errorf("vm pod %s: no guest connection: %w", podID, errdefs.ErrUnavailable)
		}
		st, err := g.pods.PodService().ContainerLog(ctx)
		if err != nil {
			return nil, err
		}
		if err := st.Send(&podsv0.ContainerLogRequest{Request: &podsv0.ContainerLogRequest_Start{
			Start: &podsv0.ContainerLogStart{ContainerId: cid, Offset: offset},
		}}); err != nil {
			return nil, err
		}
		return st, nil
	}
}

// prepareLogWriter makes (or, after a restart, resumes) a container's log
// writer: its record and the file at path; startLogWriter starts it.
func (c *Controller) prepareLogWriter(p *vmPod, cid, path string) (*logWriter, error) {
	c.mu.Lock()
	w := c.writers[cid]
	c.mu.Unlock()
	if w != nil {
		return w, nil
	}
	if err := os.MkdirAll(filepath.Join(p.dir, "logs"), 0o700); err != nil {
		return nil, err
	}
	return newLogWriter(cid, path, logRecPath(p.dir, cid), c.openLog(p.id), c.log.With("pod", p.id))
}

// startLogWriter starts w unless the container has a running writer.
func (c *Controller) startLogWriter(podID, cid string, w *logWriter) {
	c.mu.Lock()
	if old := c.writers[cid]; old != nil || c.closed {
		c.mu.Unlock()
		if old != w {
			w.stop()
		}
		return
	}
	w.pod = podID
	c.writers[cid] = w
	c.mu.Unlock()
	w.start()
}

// resumeLogWriter starts the writer of an adopted container from its
// record, when it has one (a container with a log).
func (c *Controller) resumeLogWriter(p *vmPod, cid string) {
	c.mu.Lock()
	running := c.writers[cid] != nil
	c.mu.Unlock()
	if running {
		return
	}
	if _, err := os.Stat(logRecPath(p.dir, cid)); errors.Is(err, os.ErrNotExist) {
		return
	}
	w, err := c.prepareLogWriter(p, cid, "")
	if err != nil {
		c.log.Error("container log writer not resumed", "pod", p.id, "container", cid, "error", err)
		return
	}
	c.startLogWriter(p.id, cid, w)
}

// stopLogWriters stops the writers of a container (cid != "") or of every
// container of a pod, with their positions persisted.
func (c *Controller) stopLogWriters(podID, cid string) {
	c.mu.Lock()
	var stop []*logWriter
	for id, w := range c.writers {
		if id == cid || (cid == "" && w.pod == podID) {
			stop = append(stop, w)
			delete(c.writers, id)
		}
	}
	c.mu.Unlock()
	for _, w := range stop {
		w.stop()
	}
}

// dropLogWriter undoes prepareLogWriter for a container that did not
// start: the writer (unless one runs already) and its record; the file
// stays, empty or as it was (the kubelet removes it with the container).
func (c *Controller) dropLogWriter(p *vmPod, cid string, w *logWriter) error {
	c.mu.Lock()
	running := c.writers[cid] == w
	c.mu.Unlock()
	if running {
		return nil
	}
	w.stop()
	if err := os.Remove(logRecPath(p.dir, cid)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// removeLogWriter stops a removed container's writer and drops its record.
func (c *Controller) removeLogWriter(p *vmPod, cid string) error {
	c.stopLogWriters(p.id, cid)
	if err := os.Remove(logRecPath(p.dir, cid)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// ReopenContainerLog makes the container's host-side writer open its path
// again (the kubelet renamed the file away).
func (c *Controller) ReopenContainerLog(ctx context.Context, cid string) error {
	c.mu.Lock()
	w := c.writers[cid]
	_, known := c.ctrs[cid]
	c.mu.Unlock()
	if w == nil {
		if !known {
			return fmt.Errorf("container %s: %w", cid, errdefs.ErrNotFound)
		}
		return fmt.Errorf("container %s has no log file: %w", cid, errdefs.ErrFailedPrecondition)
	}
	return w.reopen(ctx)
}

// Close stops the log writers (their positions persisted); VMs and
// guests outlive the process.
func (c *Controller) Close() error {
	c.mu.Lock()
	c.closed = true
	ws := c.writers
	c.writers = map[string]*logWriter{}
	c.mu.Unlock()
	for _, w := range ws {
		w.stop()
	}
	return nil
}
