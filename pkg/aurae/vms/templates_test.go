package vms

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/aurae-runtime/aurae-cri/pkg/hypervisor"
)

// fakeTemplater makes templates whose state is the key's machine id.
type fakeTemplater struct {
	makes    atomic.Int32
	release  chan struct{} // MakeTemplate waits for it when not nil
	makeErr  error
	startErr error
}

func (f *fakeTemplater) TemplateKey(context.Context, hypervisor.VMConfig) (string, error) {
	return testKey, nil
}

func (f *fakeTemplater) MakeTemplate(ctx context.Context, cfg hypervisor.VMConfig, out *os.File) (hypervisor.TemplateInfo, error) {
	f.makes.Add(1)
	if f.release != nil {
		<-f.release
	}
	if f.makeErr != nil {
		return hypervisor.TemplateInfo{}, f.makeErr
	}
	n, err := out.WriteString("saved guest " + cfg.Kernel)
	return hypervisor.TemplateInfo{Bytes: int64(n)}, err
}

func (f *fakeTemplater) StartFromTemplate(context.Context, hypervisor.VMConfig, *os.File) (*hypervisor.Proc, error) {
	return nil, f.startErr
}

func needRootFiles(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: a template's state must be root's")
	}
}

func newFakeTemplates(t *testing.T, f *fakeTemplater) *templates {
	t.Helper()
	tp, err := newTemplates(t.TempDir(), f, 4242, func(context.Context, string) error { return nil }, slog.New(slog.NewTextHandler(testWriter{t}, nil)))
	if err != nil {
		t.Fatal(err)
	}
	return tp
}

const testKey = "0123456789abcdef0123456789abcdef"

func TestTemplatesMadeOnceForConcurrentVMs(t *testing.T) {
	needRootFiles(t)
	f := &fakeTemplater{release: make(chan struct{})}
	tp := newFakeTemplates(t, f)
	var wg sync.WaitGroup
	errs := make([]error, 5)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st, err := tp.get(context.Background(), testKey, hypervisor.VMConfig{Kernel: "/k", VCPUs: 1, MemMiB: 256})
			if err == nil {
				b, _ := os.ReadFile(st.Name())
				if string(b) != "saved guest /k" {
					err = errors.New("state reads " + string(b))
				}
				st.Close()
			}
			errs[i] = err
		}()
	}
	close(f.release)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("vm %d: %v", i, err)
		}
	}
	if n := f.makes.Load(); n != 1 {
		t.Errorf("template made %d times, want once", n)
	}
	fi, err := os.Stat(filepath.Join(tp.dir, testKey, templateState))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("state: %v %v, want mode 0600", fi, err)
	}
	if tmps, _ := filepath.Glob(filepath.Join(tp.dir, templateTmp+"*")); len(tmps) > 0 {
		t.Errorf("temp dirs left: %v", tmps)
	}
}

func TestTemplateFailureLeavesNothingAndEveryWaiterFails(t *testing.T) {
	needRootFiles(t)
	f := &fakeTemplater{release: make(chan struct{}), makeErr: errors.New("guest did not answer")}
	tp := newFakeTemplates(t, f)
	var wg sync.WaitGroup
	errs := make([]error, 3)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = tp.get(context.Background(), testKey, hypervisor.VMConfig{Kernel: "/k"})
		}()
	}
	close(f.release)
	wg.Wait()
	for i, err := range errs {
		if err == nil {
			t.Errorf("vm %d got a template that failed to be made", i)
		}
	}
	if ents, _ := os.ReadDir(tp.dir); len(ents) != 0 {
		t.Errorf("left in the templates dir: %v", ents)
	}
}

func TestTemplatesCleanupRemovesWhatIsNotWhole(t *testing.T) {
	needRootFiles(t)
	tp := newFakeTemplates(t, &fakeTemplater{})
	if _, err := tp.get(context.Background(), testKey, hypervisor.VMConfig{Kernel: "/k"}); err != nil {
		t.Fatal(err)
	}
	// kill -9 while a template was made; a template without its meta; one
	// whose meta names another key; one whose state is not root-only.
	half := filepath.Join(tp.dir, templateTmp+"123", "v")
	noMeta := filepath.Join(tp.dir, "aaaa")
	wrongKey := filepath.Join(tp.dir, "bbbb")
	for _, d := range []string{half, noMeta, wrongKey} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	_ = os.WriteFile(filepath.Join(noMeta, templateState), []byte("x"), 0o600)
	_ = os.WriteFile(filepath.Join(wrongKey, templateState), []byte("x"), 0o600)
	_ = os.WriteFile(filepath.Join(wrongKey, templateMeta), []byte(`{"key":"cccc"}`), 0o600)
	if err := os.Chmod(filepath.Join(tp.dir, testKey, templateState), 0o644); err != nil {
		t.Fatal(err)
	}
	var killed []string
	tp.cleanup(context.Background(), func(_ context.Context, vmDir string) { killed = append(killed, vmDir) })
	if !slices.Equal(killed, []string{half}) {
		t.Errorf("hypervisors killed in %v, want %v", killed, []string{half})
	}
	if ents, _ := os.ReadDir(tp.dir); len(ents) != 0 {
		t.Errorf("left after cleanup: %v", ents)
	}
}

func TestTemplateReplacesStaleOnes(t *testing.T) {
	needRootFiles(t)
	tp := newFakeTemplates(t, &fakeTemplater{})
	ctx := context.Background()
	small := hypervisor.VMConfig{Kernel: "/k", VCPUs: 1, MemMiB: 256}
	big := hypervisor.VMConfig{Kernel: "/k", VCPUs: 1, MemMiB: 512}
	for _, m := range []struct {
		key string
		cfg hypervisor.VMConfig
	}{{"11111111aaaa", small}, {"22222222bbbb", big}, {"33333333cccc", small}} {
		st, err := tp.get(ctx, m.key, m.cfg)
		if err != nil {
			t.Fatal(err)
		}
		st.Close()
	}
	var keys []string
	ents, _ := os.ReadDir(tp.dir)
	for _, e := range ents {
		keys = append(keys, e.Name())
	}
	// The first was made for the same machine as the third: its images
	// changed since (another key), so it is stale.
	if want := []string{"22222222bbbb", "33333333cccc"}; !slices.Equal(keys, want) {
		t.Errorf("templates %v, want %v", keys, want)
	}
}

func TestTemplateStateMustBeRootOnly(t *testing.T) {
	needRootFiles(t)
	dir := t.TempDir()
	p := filepath.Join(dir, templateState)
	if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if f, err := openState(dir); err == nil {
		f.Close()
		t.Error("a state readable by others was used")
	}
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(dir, "other")
	if err := os.WriteFile(other, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(other, p); err != nil {
		t.Fatal(err)
	}
	if f, err := openState(dir); err == nil {
		f.Close()
		t.Error("a state that is a symlink was followed")
	}
}

func TestSplitKernelArgs(t *testing.T) {
	base, plan, why := splitKernelArgs([]string{"quiet", "aurae.virtiofs=aurae:/run/aurae/shared", "aurae.hostname=pod-1", "aurae.log_level=debug"})
	if why != "" || !slices.Equal(base, []string{"quiet", "aurae.log_level=debug"}) || plan.hostname != "pod-1" ||
		len(plan.virtiofs) != 1 || plan.virtiofs[0] != [2]string{"aurae", "/run/aurae/shared"} {
		t.Errorf("split: %q %+v %q", base, plan, why)
	}
	if _, _, why := splitKernelArgs([]string{"aurae.mount=mount0:/data:ext4:rw"}); why == "" {
		t.Error("aurae.mount= (read at boot only) was accepted for a template")
	}
}

func TestFailedRestoreDropsTheTemplateAndSaysWhy(t *testing.T) {
	needRootFiles(t)
	f := &fakeTemplater{startErr: errors.New("load of migration failed")}
	tp := newFakeTemplates(t, f)
	s := &Service{log: tp.log, tpl: tp}
	v := &vm{id: "vm1", dir: t.TempDir()}
	cfg := hypervisor.VMConfig{ID: "vm1", Kernel: "/k", KernelArgs: []string{"quiet", "aurae.hostname=vm1"}}
	_, _, err := s.startFromTemplate(context.Background(), v, cfg)
	if err == nil || !strings.Contains(err.Error(), "load of migration failed") {
		t.Fatalf("start from a template that does not load: %v", err)
	}
	if f.makes.Load() != 1 {
		t.Errorf("template made %d times, want once", f.makes.Load())
	}
	if _, err := tp.check(testKey); err == nil {
		t.Error("a template that failed to restore is kept")
	}
	// A VM the template cannot serve is refused before any is made.
	cfg.KernelArgs = append(cfg.KernelArgs, "aurae.mount=mount0:/data:ext4:rw")
	if _, _, err := s.startFromTemplate(context.Background(), v, cfg); !errors.Is(err, hypervisor.ErrTemplateUnsupported) {
		t.Errorf("a VM with a boot-time mount: %v, want ErrTemplateUnsupported", err)
	}
	tp.markUnfit(testKey, "the guest image has no GuestService")
	cfg.KernelArgs = cfg.KernelArgs[:2]
	if _, _, err := s.startFromTemplate(context.Background(), v, cfg); !errors.Is(err, hypervisor.ErrTemplateUnsupported) || !strings.Contains(err.Error(), "GuestService") {
		t.Errorf("a VM whose template's guest cannot be configured: %v", err)
	}
	if f.makes.Load() != 1 {
		t.Errorf("template made %d times, want once", f.makes.Load())
	}
}
