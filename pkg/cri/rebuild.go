package cri

import (
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"

	"github.com/aurae-runtime/aurae-cri/pkg/sandbox"
)

// rebuildOrSync runs first in Recover. A store that started empty (its
// file was unreadable and moved aside, or missing) is rebuilt from the
// on-disk records of the pods and containers (rebuild); a store read from
// its file has its records brought back in line with it (SyncRecords).
// Either way the usual recovery follows and asks the controllers for the
// states: a rebuilt pod its controller no longer runs becomes NOTREADY, a
// rebuilt container its controller no longer knows EXITED.
func (r *Runtime) rebuildOrSync() {
	if r.store.Fresh() {
		r.rebuild()
		return
	}
	written, removed, err := r.store.SyncRecords()
	for _, p := range written {
		r.log.Info("on-disk record written for a stored object", "record", p)
	}
	for _, p := range removed {
		r.log.Warn("stale on-disk record removed", "record", p)
	}
	if err != nil {
		r.log.Error("sync on-disk records", "error", err)
	}
}

// rebuild restores every pod and container an on-disk record holds, as
// the record says (its config, metadata, labels, annotations, runtime
// handler, network and namespace paths, log path, image, spec and last
// recorded state). A record that is garbled or names what aurae-cri never
// makes (its id or paths, its name against its metadata) is refused with
// a log line and left where it is; so is a container whose pod has no
// usable record. It never stops aurae-cri.
func (r *Runtime) rebuild() {
	recs, err := r.store.ReadRecords()
	if err != nil {
		r.log.Error("state not rebuilt: the on-disk records cannot be read", "moved_aside", r.store.MovedAside(), "error", err)
		return
	}
	if len(recs.Sandboxes) == 0 && len(recs.Containers) == 0 && len(recs.Refused) == 0 {
		if r.store.MovedAside() != "" {
			r.log.Warn("state not rebuilt: no on-disk records", "moved_aside", r.store.MovedAside())
		}
		return
	}
	refused := len(recs.Refused)
	for _, rf := range recs.Refused {
		r.log.Error("on-disk record refused", "record", rf.Path, "error", rf.Err)
	}
	pods := map[string]sandbox.Sandbox{}
	for _, sb := range recs.Sandboxes {
		log := r.log.With("pod", sb.ID, "pod_name", sb.Name)
		if err := checkPodRecord(sb); err != nil {
			log.Error("on-disk pod record refused", "error", err)
			refused++
			continue
		}
		if _, err := r.controller(sb.RuntimeHandler); err != nil {
			log.Warn("rebuilt pod of a runtime handler not configured: it stays as recorded", "runtime_handler", sb.RuntimeHandler)
		}
		if err := r.store.RestoreSandbox(sb); err != nil {
			log.Error("on-disk pod record not restored", "error", err)
			refused++
			continue
		}
		pods[sb.ID] = sb
		log.Info("pod rebuilt from its on-disk record", "state", sb.Status.State.String(), "runtime_handler", sb.RuntimeHandler,
			"netns", sb.Status.NetNSPath, "network_up", sb.Status.NetworkUp)
	}
	ctrs := 0
	for _, c := range recs.Containers {
		log := r.log.With("pod", c.SandboxID, "container", c.ID, "container_name", c.Name)
		sb, ok := pods[c.SandboxID]
		if !ok {
			log.Error("on-disk container record refused: its pod has no usable record")
			refused++
			continue
		}
		if err := checkContainerRecord(c, sb); err != nil {
			log.Error("on-disk container record refused", "error", err)
			refused++
			continue
		}
		if err := r.store.RestoreContainer(c); err != nil {
			log.Error("on-disk container record not restored", "error", err)
			refused++
			continue
		}
		ctrs++
		log.Info("container rebuilt from its on-disk record", "state", c.Status.State.String(), "image", c.ImageRef)
	}
	r.log.Warn("state rebuilt from on-disk records", "pods", len(pods), "containers", ctrs, "refused", refused,
		"moved_aside", r.store.MovedAside())
}

// checkPodRecord refuses a pod record whose name is not the one its
// metadata makes, or whose namespace and cgroup paths (used for CNI DEL and
// id-mapped mounts) are not the pod's own.
func checkPodRecord(sb sandbox.Sandbox) error {
	if err := checkSandboxMetadata(sb.Config.GetMetadata()); err != nil {
		return err
	}
	if want := sandboxName(sb.Config.GetMetadata()); sb.Name != want {
		return fmt.Errorf("name %q, its metadata makes %q", sb.Name, want)
	}
	if d := sb.Config.GetLogDirectory(); d != "" {
		if err := checkAbsolute("log directory", d); err != nil {
			return err
		}
	}
	for what, p := range map[string]string{"netns": sb.Status.NetNSPath, "userns": sb.Status.UserNSPath} {
		if p == "" {
			continue
		}
		if err := checkAbsolute(what+" path", p); err != nil {
			return err
		}
		if err := pathOfPod(what, p, sb.ID); err != nil {
			return err
		}
	}
	if p := sb.Status.CgroupPath; p != "" {
		if err := pathOfPod("cgroup", p, sb.ID); err != nil {
			return err
		}
	}
	return nil
}

// pathOfPod refuses a path that is not clean, has a "..", or does not
// name the pod (its namespaces and cgroup are in a directory named by its
// id).
func pathOfPod(what, p, id string) error {
	parts := strings.Split(p, "/")
	switch {
	case strings.ContainsRune(p, 0) || filepath.Clean(p) != p || slices.Contains(parts, ".."):
		return fmt.Errorf("%s path %q is not clean", what, p)
	case !slices.Contains(parts, id):
		return fmt.Errorf("%s path %q is not the pod's", what, p)
	}
	return nil
}

// checkContainerRecord refuses a container record whose name is not the
// one its metadata and pod make, or whose log path is not its config's
// under its pod's log directory.
func checkContainerRecord(c sandbox.Container, sb sandbox.Sandbox) error {
	if err := checkContainerMetadata(c.Config.GetMetadata()); err != nil {
		return err
	}
	if want := containerName(c.Config.GetMetadata(), sb.Config.GetMetadata()); c.Name != want {
		return fmt.Errorf("name %q, its metadata makes %q", c.Name, want)
	}
	rel, err := cleanRelative("log path", c.Config.GetLogPath())
	if err != nil {
		return err
	}
	want := ""
	if dir := sb.Config.GetLogDirectory(); dir != "" && rel != "" {
		want = filepath.Join(dir, rel)
	}
	if c.LogPath != want {
		return fmt.Errorf("log path %q, its config makes %q", c.LogPath, want)
	}
	if c.LogPath != "" {
		if err := checkAbsolute("log path", c.LogPath); err != nil {
			return err
		}
	}
	if c.ImageRef == "" {
		return errors.New("no image")
	}
	return nil
}
