package image

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/remotes/docker"
	remoteerrors "github.com/containerd/containerd/v2/core/remotes/errors"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

func TestNormalizeRef(t *testing.T) {
	for in, want := range map[string]string{
		"busybox":                      "docker.io/library/busybox:latest",
		"busybox:1.36":                 "docker.io/library/busybox:1.36",
		"library/busybox":              "docker.io/library/busybox:latest",
		"quay.io/a/b":                  "quay.io/a/b:latest",
		"127.0.0.1:5000/x/y:t":         "127.0.0.1:5000/x/y:t",
		"busybox@sha256:" + hex64('a'): "docker.io/library/busybox@sha256:" + hex64('a'),
		// A tag and a digest: the digest wins.
		"busybox:1@sha256:" + hex64('b'): "docker.io/library/busybox@sha256:" + hex64('b'),
	} {
		got, err := NormalizeRef(in)
		if err != nil || got.String() != want {
			t.Errorf("NormalizeRef(%q) = %v, %v; want %s", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "UPPER", "a b", "x::y", "sha256:" + hex64('c'), hex64('d')} {
		if _, err := NormalizeRef(bad); !errdefs.IsInvalidArgument(err) {
			t.Errorf("NormalizeRef(%q) err = %v, want invalid argument", bad, err)
		}
	}
}

func hex64(c byte) string {
	b := make([]byte, 64)
	for i := range b {
		b[i] = c
	}
	return string(b)
}

func TestSplitRef(t *testing.T) {
	target := "sha256:" + hex64('b')
	for in, want := range map[string][2]string{
		"docker.io/library/busybox:latest":               {"docker.io/library/busybox:latest", "docker.io/library/busybox@" + target},
		"docker.io/library/busybox@sha256:" + hex64('a'): {"", "docker.io/library/busybox@sha256:" + hex64('a')},
		"sha256:" + hex64('a'):                           {"", ""},
		"not a ref":                                      {"", ""},
	} {
		tag, dgst := splitRef(in, target)
		if tag != want[0] || dgst != want[1] {
			t.Errorf("splitRef(%q) = %q, %q; want %q", in, tag, dgst, want)
		}
	}
}

func TestUserFromConfig(t *testing.T) {
	for _, tc := range []struct {
		user string
		uid  int64
		name string
	}{
		{"", -1, ""},
		{"0", 0, ""},
		{"1000:1000", 1000, ""},
		{"app", -1, "app"},
		{"app:staff", -1, "app"},
	} {
		uid, name := UserFromConfig(tc.user)
		gotUID := int64(-1)
		if uid != nil {
			gotUID = *uid
		}
		if gotUID != tc.uid || name != tc.name {
			t.Errorf("UserFromConfig(%q) = %d, %q; want %d, %q", tc.user, gotUID, name, tc.uid, tc.name)
		}
	}
}

func TestParseAuth(t *testing.T) {
	enc := base64.StdEncoding.EncodeToString([]byte("bob:pw"))
	for _, tc := range []struct {
		name       string
		auth       *runtimeapi.AuthConfig
		host       string
		user, pass string
	}{
		{"nil", nil, "r.io", "", ""},
		{"user password", &runtimeapi.AuthConfig{Username: "u", Password: "p"}, "r.io", "u", "p"},
		{"identity token", &runtimeapi.AuthConfig{IdentityToken: "tok"}, "r.io", "", "tok"},
		{"auth string", &runtimeapi.AuthConfig{Auth: enc}, "r.io", "bob", "pw"},
		{"matching server", &runtimeapi.AuthConfig{Username: "u", Password: "p", ServerAddress: "https://r.io"}, "r.io", "u", "p"},
		{"matching bare server", &runtimeapi.AuthConfig{Username: "u", Password: "p", ServerAddress: "r.io:5000"}, "r.io:5000", "u", "p"},
		{"other server", &runtimeapi.AuthConfig{Username: "u", Password: "p", ServerAddress: "https://other.io"}, "r.io", "", ""},
		{"docker hub alias", &runtimeapi.AuthConfig{Username: "u", Password: "p", ServerAddress: "https://index.docker.io/v1/"}, "registry-1.docker.io", "u", "p"},
		{"docker hub", &runtimeapi.AuthConfig{Username: "u", Password: "p", ServerAddress: "docker.io"}, "registry-1.docker.io", "u", "p"},
	} {
		u, p, err := parseAuth(tc.auth, tc.host)
		if err != nil || u != tc.user || p != tc.pass {
			t.Errorf("%s: parseAuth = %q, %q, %v; want %q, %q", tc.name, u, p, err, tc.user, tc.pass)
		}
	}
	if _, _, err := parseAuth(&runtimeapi.AuthConfig{Auth: "!!"}, "r.io"); !errdefs.IsInvalidArgument(err) {
		t.Errorf("bad base64: %v", err)
	}
	if _, _, err := parseAuth(&runtimeapi.AuthConfig{Auth: base64.StdEncoding.EncodeToString([]byte("nocolon"))}, "r.io"); !errdefs.IsInvalidArgument(err) {
		t.Errorf("auth without colon: %v", err)
	}
}

func TestClassifyPullError(t *testing.T) {
	for _, tc := range []struct {
		err  error
		code codes.Code
	}{
		{fmt.Errorf("resolve: %w", remoteerrors.ErrUnexpectedStatus{StatusCode: http.StatusUnauthorized}), codes.Unauthenticated},
		{fmt.Errorf("resolve: %w", remoteerrors.ErrUnexpectedStatus{StatusCode: http.StatusForbidden}), codes.PermissionDenied},
		{fmt.Errorf("resolve: %w", remoteerrors.ErrUnexpectedStatus{StatusCode: http.StatusTooManyRequests}), codes.ResourceExhausted},
		{fmt.Errorf("denied: %w", docker.ErrInvalidAuthorization), codes.Unauthenticated},
		{fmt.Errorf("x: %w", errdefs.ErrNotFound), codes.NotFound},
		{context.DeadlineExceeded, codes.DeadlineExceeded},
	} {
		st, _ := status.FromError(toStatus(classifyPullError(tc.err)))
		if st.Code() != tc.code {
			t.Errorf("%v: code %s, want %s", tc.err, st.Code(), tc.code)
		}
		if st.Message() != classifyPullError(tc.err).Error() && tc.code != codes.DeadlineExceeded {
			t.Errorf("message %q lost the error", st.Message())
		}
	}
	if toStatus(nil) != nil {
		t.Error("toStatus(nil) != nil")
	}
	if st, _ := status.FromError(toStatus(errors.New("plain"))); st.Code() == codes.OK {
		t.Error("plain error mapped to OK")
	}
}

// TestSplitRefOfPulledNames: what a pull logs and records of the names
// NormalizeRef gives: a tag and the repo digest at the pulled target; a
// repo digest keeps its own digest whatever the target.
func TestSplitRefOfPulledNames(t *testing.T) {
	tagged, _ := NormalizeRef("busybox:1")
	tg, d := splitRef(tagged.String(), "sha256:"+hex64('e'))
	if d != "docker.io/library/busybox@sha256:"+hex64('e') || tg != "docker.io/library/busybox:1" {
		t.Errorf("tagged: %q %q", d, tg)
	}
	canonical, _ := NormalizeRef("busybox@sha256:" + hex64('f'))
	tg, d = splitRef(canonical.String(), "sha256:"+hex64('e'))
	if d != "docker.io/library/busybox@sha256:"+hex64('f') || tg != "" {
		t.Errorf("canonical: %q %q", d, tg)
	}
}

func TestRootfsLease(t *testing.T) {
	long := hex64('a') + hex64('b')
	if l := RootfsLease(long); len(l) > 76 || l == RootfsLease(hex64('a')) {
		t.Errorf("lease id %q", l)
	}
	if a, b := RootfsLease("x"), RootfsLease("x"); a != b {
		t.Error("lease id not deterministic")
	}
}

func TestKeyedMutex(t *testing.T) {
	var k keyedMutex
	var inside, maxInside atomic.Int32
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			unlock, err := k.lock(context.Background(), "a")
			if err != nil {
				t.Error(err)
				return
			}
			n := inside.Add(1)
			for {
				m := maxInside.Load()
				if n <= m || maxInside.CompareAndSwap(m, n) {
					break
				}
			}
			time.Sleep(time.Millisecond)
			inside.Add(-1)
			unlock()
		}()
	}
	wg.Wait()
	if maxInside.Load() != 1 {
		t.Errorf("%d holders at once", maxInside.Load())
	}

	unlock, err := k.lock(context.Background(), "b")
	if err != nil {
		t.Fatal(err)
	}
	// Another key is not blocked.
	unlockC, err := k.lock(context.Background(), "c")
	if err != nil {
		t.Fatal(err)
	}
	unlockC()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := k.lock(ctx, "b"); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("waiting on a held key: %v", err)
	}
	unlock()
	k.mu.Lock()
	left := len(k.locks)
	k.mu.Unlock()
	if left != 0 {
		t.Errorf("%d keys left", left)
	}
}

func TestCheckUnpackable(t *testing.T) {
	layer := func(d string) ocispec.Descriptor {
		return ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.Digest(d), Size: 10}
	}
	spec := func(ids ...string) ocispec.Image {
		var img ocispec.Image
		for _, id := range ids {
			img.RootFS.DiffIDs = append(img.RootFS.DiffIDs, digest.Digest(id))
		}
		return img
	}
	good, other := "sha256:"+hex64('a'), "sha256:"+hex64('b')
	for _, tc := range []struct {
		name     string
		manifest ocispec.Manifest
		spec     ocispec.Image
		ok       bool
	}{
		{"one layer", ocispec.Manifest{Layers: []ocispec.Descriptor{layer(good)}}, spec(other), true},
		{"no layer", ocispec.Manifest{}, spec(), false},
		{"more diff ids", ocispec.Manifest{Layers: []ocispec.Descriptor{layer(good)}}, spec(other, other), false},
		{"bad diff id", ocispec.Manifest{Layers: []ocispec.Descriptor{layer(good)}}, spec("sha256:../../x"), false},
		{"bad layer digest", ocispec.Manifest{Layers: []ocispec.Descriptor{layer("sha256:zz")}}, spec(other), false},
		{"negative size", ocispec.Manifest{Layers: []ocispec.Descriptor{{Digest: digest.Digest(good), Size: -1}}}, spec(other), false},
	} {
		err := checkUnpackable(tc.manifest, tc.spec)
		if (err == nil) != tc.ok || (err != nil && !errors.Is(err, errNotUnpacked)) {
			t.Errorf("%s: %v", tc.name, err)
		}
	}
}
