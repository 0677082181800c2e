package ocispec

import (
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"testing/fstest"
	"time"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

func TestUser(t *testing.T) {
	i64 := func(v int64) *runtimeapi.Int64Value { return &runtimeapi.Int64Value{Value: v} }
	tests := []struct {
		name         string
		imageUser    string
		runAsUser    *runtimeapi.Int64Value
		runAsName    string
		runAsGroup   *runtimeapi.Int64Value
		supplemental []int64
		strict       bool
		rootfs       fs.FS
		want         specs.User
		wantErr      error
		wantMsg      string
	}{
		{name: "default root", want: specs.User{UID: 0, GID: 0, AdditionalGids: []uint32{0, 10}}},
		{name: "run as uid from passwd", runAsUser: i64(1000), want: specs.User{UID: 1000, GID: 1000, AdditionalGids: []uint32{10, 100, 1000}}},
		{name: "run as unknown uid", runAsUser: i64(4242), want: specs.User{UID: 4242, GID: 0, AdditionalGids: []uint32{0}}},
		{name: "run as username", runAsName: "bob", want: specs.User{UID: 1001, GID: 100, AdditionalGids: []uint32{29, 100}}},
		{name: "username wins over uid", runAsUser: i64(1000), runAsName: "bob", want: specs.User{UID: 1001, GID: 100, AdditionalGids: []uint32{29, 100}}},
		{name: "run as uid and group", runAsUser: i64(1000), runAsGroup: i64(50), want: specs.User{UID: 1000, GID: 50, AdditionalGids: []uint32{10, 50, 100}}},
		{name: "security context wins over image", imageUser: "bob", runAsUser: i64(1000), want: specs.User{UID: 1000, GID: 1000, AdditionalGids: []uint32{10, 100, 1000}}},
		{name: "supplemental groups merged", runAsUser: i64(1000), supplemental: []int64{5, 10}, want: specs.User{UID: 1000, GID: 1000, AdditionalGids: []uint32{5, 10, 100, 1000}}},
		{name: "strict policy ignores /etc/group", runAsUser: i64(1000), supplemental: []int64{5}, strict: true, want: specs.User{UID: 1000, GID: 1000, AdditionalGids: []uint32{5, 1000}}},
		{name: "image uid", imageUser: "1001", want: specs.User{UID: 1001, GID: 100, AdditionalGids: []uint32{29, 100}}},
		{name: "image name", imageUser: "alice", want: specs.User{UID: 1000, GID: 1000, AdditionalGids: []uint32{10, 100, 1000}}},
		{name: "image uid:gid", imageUser: "1001:29", want: specs.User{UID: 1001, GID: 29, AdditionalGids: []uint32{29, 100}}},
		{name: "image name:group", imageUser: "alice:staff", want: specs.User{UID: 1000, GID: 50, AdditionalGids: []uint32{10, 50, 100}}},
		{name: "image uid:group", imageUser: "4242:audio", want: specs.User{UID: 4242, GID: 29, AdditionalGids: []uint32{29}}},
		{name: "image name:gid", imageUser: "bob:7", want: specs.User{UID: 1001, GID: 7, AdditionalGids: []uint32{7, 29, 100}}},
		{name: "no passwd: uid still works", runAsUser: i64(1000), rootfs: fstest.MapFS{}, want: specs.User{UID: 1000, GID: 0, AdditionalGids: []uint32{0}}},
		{name: "no passwd: numeric image user", imageUser: "5:6", rootfs: fstest.MapFS{}, want: specs.User{UID: 5, GID: 6, AdditionalGids: []uint32{6}}},
		{
			name: "passwd behind an absolute symlink inside the rootfs", runAsName: "bob",
			rootfs: fstest.MapFS{
				"etc/passwd":      {Data: []byte("/usr/lib/passwd"), Mode: fs.ModeSymlink},
				"usr/lib/passwd":  {Data: []byte(testPasswd)},
				"etc/group":       {Data: []byte("../usr/lib/group"), Mode: fs.ModeSymlink},
				"usr/lib/group":   {Data: []byte(testGroup)},
				"usr/lib/unused":  {Data: []byte("x")},
				"etc/unused-link": {Data: []byte("/nowhere"), Mode: fs.ModeSymlink},
			},
			want: specs.User{UID: 1001, GID: 100, AdditionalGids: []uint32{29, 100}},
		},
		{name: "unknown username", runAsName: "nobody", wantErr: errdefs.ErrInvalidArgument, wantMsg: `user "nobody" not found`},
		{name: "unknown image user", imageUser: "nobody", wantErr: errdefs.ErrInvalidArgument, wantMsg: `user "nobody" not found`},
		{name: "no passwd: name refused", runAsName: "bob", rootfs: fstest.MapFS{}, wantErr: errdefs.ErrInvalidArgument},
		{name: "unknown group", imageUser: "alice:nogroup", wantErr: errdefs.ErrInvalidArgument, wantMsg: `group "nogroup" not found`},
		{name: "group without user", runAsGroup: i64(5), wantErr: errdefs.ErrInvalidArgument},
		{name: "uid out of range", runAsUser: i64(1 << 40), wantErr: errdefs.ErrInvalidArgument},
		{name: "negative uid", runAsUser: i64(-1), wantErr: errdefs.ErrInvalidArgument},
		{name: "gid out of range", imageUser: "1:99999999999", wantErr: errdefs.ErrInvalidArgument},
		{name: "too many colons", imageUser: "a:b:c", wantErr: errdefs.ErrInvalidArgument},
		{name: "empty group", imageUser: "alice:", wantErr: errdefs.ErrInvalidArgument},
		{name: "negative supplemental group", runAsUser: i64(0), supplemental: []int64{-3}, wantErr: errdefs.ErrInvalidArgument},
		{name: "broken passwd entry is skipped", runAsName: "broken", wantErr: errdefs.ErrInvalidArgument},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := testInput()
			if tc.rootfs != nil {
				in.RootFS = tc.rootfs
			}
			in.Image.User = tc.imageUser
			sc := linuxSC(&in)
			sc.RunAsUser, sc.RunAsUsername, sc.RunAsGroup = tc.runAsUser, tc.runAsName, tc.runAsGroup
			sc.SupplementalGroups = tc.supplemental
			if tc.strict {
				sc.SupplementalGroupsPolicy = runtimeapi.SupplementalGroupsPolicy_Strict
			}
			s, err := Generate(in)
			if !checkErr(t, err, tc.wantErr) {
				if !strings.Contains(err.Error(), tc.wantMsg) {
					t.Errorf("error %q does not say %q", err, tc.wantMsg)
				}
				return
			}
			if s.Process.User.UID != tc.want.UID || s.Process.User.GID != tc.want.GID ||
				!slices.Equal(s.Process.User.AdditionalGids, tc.want.AdditionalGids) {
				t.Errorf("user %+v, want %+v", s.Process.User, tc.want)
			}
		})
	}
}

// TestUserFromRootfsPath reads /etc/passwd from a real directory, through
// os.Root, with an absolute symlink that must resolve inside the rootfs and
// not on the host.
func TestUserFromRootfsPath(t *testing.T) {
	root := t.TempDir()
	for name, data := range map[string]string{"lib/passwd": "app:x:321:654::/:/bin/sh\n", "etc/group": "extra:x:77:app\n"} {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("/lib/passwd", filepath.Join(root, "etc/passwd")); err != nil {
		t.Fatal(err)
	}
	in := testInput()
	in.RootFS = nil
	in.Pod.RootfsPath = root
	in.Image.User = "app"
	s := mustGenerate(t, in)
	want := specs.User{UID: 321, GID: 654, AdditionalGids: []uint32{77, 654}}
	if s.Process.User.UID != want.UID || s.Process.User.GID != want.GID || !slices.Equal(s.Process.User.AdditionalGids, want.AdditionalGids) {
		t.Errorf("user %+v, want %+v", s.Process.User, want)
	}

	// A rootfs that does not exist has no /etc/passwd: numeric users only.
	in.Pod.RootfsPath = filepath.Join(root, "missing")
	in.Image.User = "12"
	if s := mustGenerate(t, in); s.Process.User.UID != 12 {
		t.Errorf("uid %d", s.Process.User.UID)
	}
	in.Image.User = "app"
	_, err := Generate(in)
	checkErr(t, err, errdefs.ErrInvalidArgument)
}

// TestUserFilesNotRegular: an image whose /etc/passwd or /etc/group is a
// FIFO (or a directory) is refused at once rather than hanging on the open.
func TestUserFilesNotRegular(t *testing.T) {
	for _, name := range []string{"etc/passwd", "etc/group"} {
		for _, kind := range []string{"fifo", "dir"} {
			t.Run(name+" "+kind, func(t *testing.T) {
				root := t.TempDir()
				if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
					t.Fatal(err)
				}
				for _, f := range []string{"etc/passwd", "etc/group"} {
					if err := os.WriteFile(filepath.Join(root, f), []byte("app:x:1:1:app\n"), 0o644); err != nil {
						t.Fatal(err)
					}
				}
				p := filepath.Join(root, name)
				if err := os.Remove(p); err != nil {
					t.Fatal(err)
				}
				var err error
				if kind == "fifo" {
					err = syscall.Mkfifo(p, 0o644)
				} else {
					err = os.Mkdir(p, 0o755)
				}
				if err != nil {
					t.Fatal(err)
				}
				in := testInput()
				in.RootFS = nil
				in.Pod.RootfsPath = root
				in.Image.User = "app"
				done := make(chan error, 1)
				go func() { _, err := Generate(in); done <- err }()
				select {
				case err := <-done:
					checkErr(t, err, errdefs.ErrInvalidArgument)
				case <-time.After(10 * time.Second):
					t.Fatal("Generate hangs")
				}
			})
		}
	}
}

func TestResolveInFS(t *testing.T) {
	fsys := fstest.MapFS{
		"a/b":       {Data: []byte("x")},
		"link":      {Data: []byte("a"), Mode: fs.ModeSymlink},
		"abs":       {Data: []byte("/a/b"), Mode: fs.ModeSymlink},
		"up":        {Data: []byte("../../../a/b"), Mode: fs.ModeSymlink},
		"loop1":     {Data: []byte("loop2"), Mode: fs.ModeSymlink},
		"loop2":     {Data: []byte("loop1"), Mode: fs.ModeSymlink},
		"file/attr": {Data: []byte("y")},
	}
	tests := []struct {
		name, want string
		err        bool
	}{
		{name: "a/b", want: "a/b"},
		{name: "link/b", want: "a/b"},
		{name: "abs", want: "a/b"},
		{name: "up", want: "a/b"},
		{name: "./a/../a/b", want: "a/b"},
		{name: "loop1", err: true},
		{name: "a/b/c", err: true},
		{name: "missing", err: true},
	}
	for _, tc := range tests {
		got, err := resolveInFS(fsys, tc.name)
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("resolveInFS(%q) = %q, %v; want %q, error %v", tc.name, got, err, tc.want, tc.err)
		}
	}
}
