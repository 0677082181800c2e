package vms

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/aurae-runtime/aurae-cri/internal/durable"
	"github.com/aurae-runtime/aurae-cri/pkg/hypervisor"
)

// VM templates (see pkg/hypervisor/template.go): a guest booted once, in
// which no workload ever ran, saved; each VM that matches its key starts
// from it instead of booting. Under the state dir:
//
//	vm-templates/<key>/state       the saved guest (root, 0600; QEMU reads
//	                               it from a descriptor auraed opens)
//	vm-templates/<key>/meta.json   what it is (written before the rename)
//	vm-templates/.tmp-*/           a template being made; renamed to <key>
//	                               only once complete and synced, removed
//	                               (and its QEMU killed) at start

// templater is what a hypervisor with templates offers (QEMU).
type templater interface {
	TemplateKey(ctx context.Context, cfg hypervisor.VMConfig) (string, error)
	MakeTemplate(ctx context.Context, cfg hypervisor.VMConfig, out *os.File) (hypervisor.TemplateInfo, error)
	StartFromTemplate(ctx context.Context, cfg hypervisor.VMConfig, state *os.File) (*hypervisor.Proc, error)
}

const (
	templatesDirName = "vm-templates"
	templateState    = "state"
	templateMeta     = "meta.json"
	templateTmp      = ".tmp-"
	// templateHostname is the template guest's hostname (each clone is
	// given its own).
	templateHostname = "aurae-template"
	// templateReadyWait bounds one readiness check of a template's guest.
	templateReadyWait = 5 * time.Second
)

// templateMetaInfo is meta.json.
type templateMetaInfo struct {
	Key       string    `json:"key"`
	Kernel    string    `json:"kernel"`
	VCPUs     uint32    `json:"vcpus"`
	MemMiB    uint32    `json:"mem_mib"`
	Bytes     int64     `json:"bytes"`
	TookMS    int64     `json:"took_ms"`
	CreatedAt time.Time `json:"created_at"`
}

// templates makes and finds VM templates.
type templates struct {
	dir string
	hv  templater
	log *slog.Logger
	// uid is the user the template maker's QEMU runs as.
	uid uint32
	// ready says when a template's guest answers (dials it).
	ready func(ctx context.Context, dir string) error

	mu     sync.Mutex
	making map[string]*making
	// unfit: keys whose guest cannot be configured (an image without
	// GuestService): their VMs boot cold, with the reason.
	unfit map[string]string
}

// making is a template being made: the others wanting it wait for done.
type making struct {
	done chan struct{}
	err  error
}

func newTemplates(stateDir string, hv templater, uid uint32, ready func(context.Context, string) error, log *slog.Logger) (*templates, error) {
	t := &templates{dir: filepath.Join(stateDir, templatesDirName), hv: hv, uid: uid, ready: ready, log: log, making: map[string]*making{}, unfit: map[string]string{}}
	if err := os.MkdirAll(t.dir, 0o700); err != nil {
		return nil, fmt.Errorf("vm templates: %w", err)
	}
	return t, nil
}

// cleanup removes what a template maker left when auraed was killed while
// it ran: its QEMU, its temp dir; and templates that are not whole.
func (t *templates) cleanup(ctx context.Context, kill func(ctx context.Context, vmDir string)) {
	ents, err := os.ReadDir(t.dir)
	if err != nil {
		t.log.Warn("vm templates", "error", err)
		return
	}
	for _, e := range ents {
		p := filepath.Join(t.dir, e.Name())
		if strings.HasPrefix(e.Name(), templateTmp) {
			kill(ctx, filepath.Join(p, "v"))
			t.log.Info("removing an unfinished vm template", "dir", p)
			_ = os.RemoveAll(p)
			continue
		}
		if _, err := t.check(e.Name()); err != nil {
			t.log.Info("removing a vm template that is not whole", "dir", p, "error", err)
			_ = os.RemoveAll(p)
		}
	}
}

// check says whether the template called key is whole, and returns its
// meta.
func (t *templates) check(key string) (templateMetaInfo, error) {
	var m templateMetaInfo
	dir := filepath.Join(t.dir, key)
	b, err := os.ReadFile(filepath.Join(dir, templateMeta))
	if err != nil {
		return m, err
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return m, fmt.Errorf("%s: %w", templateMeta, err)
	}
	if m.Key != key {
		return m, fmt.Errorf("%s names template %q", templateMeta, m.Key)
	}
	f, err := openState(dir)
	if err != nil {
		return m, err
	}
	return m, f.Close()
}

// openState opens a template's state read-only and checks that it is
// root's, 0600, a regular file, and not empty.
func openState(dir string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, templateState), os.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !fi.Mode().IsRegular() || !ok || st.Uid != 0 || fi.Mode().Perm() != 0o600 || fi.Size() == 0 {
		f.Close()
		return nil, fmt.Errorf("template state %s: want a non-empty regular file of root's, mode 0600", f.Name())
	}
	return f, nil
}

// get returns the state of the template called key for cfg's machine
// (cfg is the template's machine: see templateVM), making it first when
// there is none. One maker per key: the others wait for it.
func (t *templates) get(ctx context.Context, key string, cfg hypervisor.VMConfig) (*os.File, error) {
	dir := filepath.Join(t.dir, key)
	if _, err := t.check(key); err == nil {
		return openState(dir)
	}
	t.mu.Lock()
	m, busy := t.making[key]
	if !busy {
		m = &making{done: make(chan struct{})}
		t.making[key] = m
	}
	t.mu.Unlock()
	if busy {
		select {
		case <-m.done:
		case <-ctx.Done():
			return nil, fmt.Errorf("wait for vm template %s: %w", key, ctx.Err())
		}
	} else {
		m.err = t.make(ctx, key, cfg)
		t.mu.Lock()
		delete(t.making, key)
		t.mu.Unlock()
		close(m.done)
	}
	if m.err != nil {
		return nil, m.err
	}
	if _, err := t.check(key); err != nil {
		return nil, fmt.Errorf("vm template %s just made: %w", key, err)
	}
	return openState(dir)
}

// make boots a fresh guest and saves it as the template key, in a temp
// dir renamed once whole; then it removes the templates it replaces (same
// kernel path, vCPUs and memory, another key: their images changed).
func (t *templates) make(ctx context.Context, key string, cfg hypervisor.VMConfig) (retErr error) {
	// Short: the maker's sockets are below it (a unix socket path is at
	// most 107 bytes).
	tmp, err := os.MkdirTemp(t.dir, templateTmp)
	if err != nil {
		return err
	}
	defer func() {
		if retErr != nil {
			_ = os.RemoveAll(tmp)
		}
	}()
	vmDir := filepath.Join(tmp, "v")
	if err := os.Mkdir(vmDir, 0o700); err != nil {
		return err
	}
	out, err := os.OpenFile(filepath.Join(tmp, templateState), os.O_CREATE|os.O_EXCL|os.O_WRONLY|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return err
	}
	defer out.Close()
	cfg.Dir = vmDir
	cfg.UID, cfg.GID = t.uid, t.uid
	cfg.Place = nil
	cfg.Booted = func(ctx context.Context) error {
		rctx, cancel := context.WithTimeout(ctx, templateReadyWait)
		defer cancel()
		return t.ready(rctx, vmDir)
	}
	t.log.InfoContext(ctx, "making a vm template", "key", key, "vcpus", cfg.VCPUs, "mem_mib", cfg.MemMiB)
	info, err := t.hv.MakeTemplate(ctx, cfg, out)
	if err != nil {
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	m := templateMetaInfo{Key: key, Kernel: cfg.Kernel, VCPUs: cfg.VCPUs, MemMiB: cfg.MemMiB, Bytes: info.Bytes,
		TookMS: info.Took.Milliseconds(), CreatedAt: time.Now().UTC()}
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	if err := durable.WriteFile(filepath.Join(tmp, templateMeta), b, os.O_CREATE|os.O_EXCL, 0o600); err != nil {
		return err
	}
	// The maker's VM dir (sockets, console) is not part of the template.
	_ = os.RemoveAll(vmDir)
	final := filepath.Join(t.dir, key)
	_ = os.RemoveAll(final) // one that was not whole
	if err := os.Rename(tmp, final); err != nil {
		return err
	}
	if err := durable.SyncDir(t.dir); err != nil {
		return err
	}
	t.log.InfoContext(ctx, "vm template made", "key", key, "bytes", info.Bytes, "took", info.Took.Round(time.Millisecond).String())
	t.removeReplaced(m)
	return nil
}

// removeReplaced removes the templates of the same kernel path, vCPUs and
// memory as m under another key.
func (t *templates) removeReplaced(m templateMetaInfo) {
	ents, _ := os.ReadDir(t.dir)
	for _, e := range ents {
		if e.Name() == m.Key || strings.HasPrefix(e.Name(), templateTmp) {
			continue
		}
		o, err := t.check(e.Name())
		if err == nil && (o.Kernel != m.Kernel || o.VCPUs != m.VCPUs || o.MemMiB != m.MemMiB) {
			continue
		}
		t.log.Info("removing a stale vm template", "key", e.Name(), "replaced_by", m.Key)
		_ = os.RemoveAll(filepath.Join(t.dir, e.Name()))
	}
}

// markUnfit remembers that clones of key cannot be configured, and
// removes the template.
func (t *templates) markUnfit(key, why string) {
	t.mu.Lock()
	t.unfit[key] = why
	t.mu.Unlock()
	t.drop(key)
}

// unfitReason says why key's clones cannot be configured ("" when they can).
func (t *templates) unfitReason(key string) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.unfit[key]
}

// drop removes the template key (it failed to restore).
func (t *templates) drop(key string) {
	_ = os.RemoveAll(filepath.Join(t.dir, key))
}

// guestPlan is what a clone's guest is told after the restore instead of
// the kernel command line: cold boots read aurae.hostname= and
// aurae.virtiofs= there.
type guestPlan struct {
	hostname string
	virtiofs [][2]string // tag, path
}

// splitKernelArgs separates the per-VM keys a clone is told by API from
// the arguments its template must have been booted with. Arguments the
// guest reads only at boot (aurae.mount=, …) make a VM unfit for a
// template: ok is false and why says which.
func splitKernelArgs(args []string) (base []string, plan guestPlan, why string) {
	for _, a := range args {
		k, v, _ := strings.Cut(a, "=")
		switch {
		case k == "aurae.hostname":
			plan.hostname = v
		case k == "aurae.virtiofs":
			tag, p, ok := strings.Cut(v, ":")
			if !ok {
				return nil, plan, "kernel argument " + strconv.Quote(a) + " is malformed"
			}
			plan.virtiofs = append(plan.virtiofs, [2]string{tag, p})
		case strings.HasPrefix(k, "aurae.") && k != "aurae.log_level":
			return nil, plan, "kernel argument " + k + "= is read only at boot"
		default:
			base = append(base, a)
		}
	}
	return base, plan, ""
}
