package cri

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// TestSandboxMetadataRules: pod names, namespaces and uids are held to the
// API server's rules; whatever could reach CNI_ARGS ("K=V;K=V") or names
// otherwise is refused, and a refused RunPodSandbox leaves nothing.
func TestSandboxMetadataRules(t *testing.T) {
	ok := []*runtimeapi.PodSandboxMetadata{
		{Name: "web-0", Namespace: "default", Uid: "0f3c8a4e-5a7b-4b9f-9a60-5b0f1c9e6d2a"},
		{Name: "a.b.c", Namespace: "kube-system", Uid: "6d5d1b6c4f1f2d3e8a0b9c7d6e5f4a3b", Attempt: 4},
		{Name: strings.Repeat("a", 63) + "." + strings.Repeat("b", 63), Namespace: strings.Repeat("n", 63), Uid: strings.Repeat("u", 128)},
		// critest's: upper case in names.
		{Name: "create-PodSandbox-for-container-0f3c8a4e-5a7b-4b9f-9a60-5b0f1c9e6d2a", Namespace: "cri-test-namespace0f3c8a4e-5a7b-4b9f-9a60-5b0f1c9e6d2a", Uid: "cri-test-uid0f3c8a4e-5a7b-4b9f-9a60-5b0f1c9e6d2a"},
	}
	for _, m := range ok {
		if err := checkSandboxMetadata(m); err != nil {
			t.Errorf("%v: %v", m, err)
		}
	}
	bad := map[string]*runtimeapi.PodSandboxMetadata{
		"cni args in name":    {Name: "inj;IP=10.88.0.77", Namespace: "default", Uid: "u"},
		"'=' in namespace":    {Name: "a", Namespace: "x=y", Uid: "u"},
		"';' in uid":          {Name: "a", Namespace: "default", Uid: "u;IP=10.88.0.77"},
		"newline in name":     {Name: "a\nb", Namespace: "default", Uid: "u"},
		"NUL in namespace":    {Name: "a", Namespace: "de\x00fault", Uid: "u"},
		"tab in uid":          {Name: "a", Namespace: "default", Uid: "u\tv"},
		"'_' in name":         {Name: "a_b", Namespace: "default", Uid: "u"},
		"'/' in name":         {Name: "a/b", Namespace: "default", Uid: "u"},
		"non-ASCII name":      {Name: "\u212aube", Namespace: "default", Uid: "u"},
		"non-ASCII namespace": {Name: "a", Namespace: "d\u00e9faut", Uid: "u"},
		"space in name":       {Name: "a b", Namespace: "default", Uid: "u"},
		"name over 253":       {Name: strings.Repeat("a", 254), Namespace: "default", Uid: "u"},
		"namespace over 63":   {Name: "a", Namespace: strings.Repeat("n", 64), Uid: "u"},
		"'.' in namespace":    {Name: "a", Namespace: "a.b", Uid: "u"},
		"uid over 128":        {Name: "a", Namespace: "default", Uid: strings.Repeat("u", 129)},
		"empty name":          {Namespace: "default", Uid: "u"},
		"empty namespace":     {Name: "a", Uid: "u"},
		"empty uid":           {Name: "a", Namespace: "default"},
	}
	f := newFixture(t, true)
	for what, m := range bad {
		if err := checkSandboxMetadata(m); code(err) != codes.InvalidArgument {
			t.Errorf("%s: %v, want InvalidArgument", what, err)
		}
		_, err := f.rt.RunPodSandbox(t.Context(), &runtimeapi.RunPodSandboxRequest{Config: &runtimeapi.PodSandboxConfig{Metadata: m}})
		if code(err) != codes.InvalidArgument {
			t.Errorf("RunPodSandbox, %s: %v, want InvalidArgument", what, err)
		}
	}
	if len(f.ctrl.pods) != 0 || len(f.net.setups) != 0 || len(f.store.Sandboxes()) != 0 {
		t.Errorf("refused pods left something: pods %v, networks %v, store %v", f.ctrl.pods, f.net.setups, f.store.Sandboxes())
	}
}

// TestContainerMetadataRules: container names are made as DNS-1123 labels,
// upper case and critest's longer names accepted.
func TestContainerMetadataRules(t *testing.T) {
	for _, name := range []string{"c", "app-1", strings.Repeat("c", 63), "container-with-RunAsGroup-without-RunAsUser-test-0f3c8a4e-5a7b-4b9f-9a60-5b0f1c9e6d2a", strings.Repeat("c", 253)} {
		if err := checkContainerMetadata(&runtimeapi.ContainerMetadata{Name: name, Attempt: 2}); err != nil {
			t.Errorf("%q: %v", name, err)
		}
	}
	for _, name := range []string{"", "a;b=c", "a_b", "a/b", "a.b", "-a", "a-", "a b", "a\x01", "\u212a", strings.Repeat("c", 254)} {
		if err := checkContainerMetadata(&runtimeapi.ContainerMetadata{Name: name}); code(err) != codes.InvalidArgument {
			t.Errorf("%q: %v, want InvalidArgument", name, err)
		}
	}
	if err := checkContainerMetadata(nil); code(err) != codes.InvalidArgument {
		t.Errorf("nil metadata: %v", err)
	}
}

// TestContainerLogPath: a log path is resolved below the log directory
// without following a symlink; missing directories are made only when asked.
func TestContainerLogPath(t *testing.T) {
	root := t.TempDir()
	logDir := filepath.Join(root, "pod")
	outside := filepath.Join(root, "outside")
	for _, d := range []string{logDir, outside} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(outside, filepath.Join(logDir, "evil")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(outside, "target.log"), filepath.Join(logDir, "link.log")); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(logDir, "adir"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, rel := range []string{"evil/0.log", "evil/sub/0.log", "link.log", "adir"} {
		for _, create := range []bool{false, true} {
			if _, err := containerLogPath(logDir, rel, create); code(err) != codes.InvalidArgument {
				t.Errorf("%s (create %v): %v, want InvalidArgument", rel, create, err)
			}
		}
	}
	if ents, _ := os.ReadDir(outside); len(ents) != 0 {
		t.Errorf("something was made outside the log directory: %v", ents)
	}
	// Checking makes nothing; creating makes the directories, not the file.
	p, err := containerLogPath(logDir, "c/0.log", false)
	if err != nil || p != filepath.Join(logDir, "c/0.log") {
		t.Fatalf("check: %q %v", p, err)
	}
	if _, err := os.Stat(filepath.Join(logDir, "c")); !os.IsNotExist(err) {
		t.Errorf("checking made the directory: %v", err)
	}
	if _, err := containerLogPath(logDir, "c/d/0.log", true); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Lstat(filepath.Join(logDir, "c/d")); err != nil || !st.IsDir() {
		t.Errorf("directory not made: %v", err)
	}
	if err := os.WriteFile(filepath.Join(logDir, "c/d/0.log"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := containerLogPath(logDir, "c/d/0.log", true); err != nil {
		t.Errorf("an existing regular log file: %v", err)
	}
	// A missing log directory: fine to check, made when creating.
	missing := filepath.Join(root, "missing")
	if _, err := containerLogPath(missing, "0.log", false); err != nil {
		t.Error(err)
	}
	if _, err := containerLogPath(missing, "c/0.log", true); err != nil {
		t.Error(err)
	}
}
