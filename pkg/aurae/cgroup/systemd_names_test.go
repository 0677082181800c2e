package cgroup

import (
	"errors"
	"strings"
	"testing"
)

func TestExpandSlice(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"-.slice", ""},
		{"system.slice", "system.slice"},
		{"kubepods.slice", "kubepods.slice"},
		{"kubepods-burstable.slice", "kubepods.slice/kubepods-burstable.slice"},
		{"kubepods-burstable-pod1234_5678.slice", "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234_5678.slice"},
		{`a-b\x2dc.slice`, `a.slice/a-b\x2dc.slice`},
	} {
		got, err := ExpandSlice(c.in)
		if err != nil || got != c.want {
			t.Errorf("ExpandSlice(%q) = %q, %v; want %q", c.in, got, err, c.want)
		}
	}
	for _, bad := range []string{"", "kubepods", "kubepods.scope", "/kubepods.slice", "a--b.slice", "-a.slice", "a-.slice", ".slice", "a/b.slice", "a b.slice", strings.Repeat("a", 250) + ".slice"} {
		if _, err := ExpandSlice(bad); !errors.Is(err, ErrNotSlice) {
			t.Errorf("ExpandSlice(%q): %v, want ErrNotSlice", bad, err)
		}
	}
}

func TestRootSlice(t *testing.T) {
	for in, want := range map[string]string{
		"":                  "-.slice",
		"/":                 "-.slice",
		"aurae":             "aurae.slice",
		"aurae-e2e-1a2b-c3": "aurae_e2e_1a2b_c3.slice",
		"/a/b-c/":           "a-b_c.slice",
		"aurae/.pods":       "aurae-pods.slice",
	} {
		if got := RootSlice(in); got != want {
			t.Errorf("RootSlice(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestSystemdParent(t *testing.T) {
	for _, c := range []struct{ root, parent, want string }{
		{"aurae.slice", "", "aurae-pods.slice"},
		{"aurae.slice", "pods", "aurae-pods.slice"},
		{"aurae.slice", "my-pods", "aurae-my_pods.slice"},
		{"-.slice", "", "pods.slice"},
		{"aurae.slice", "kubepods-burstable-pod0c2b_11.slice", "kubepods-burstable-pod0c2b_11.slice"},
		{"aurae.slice", "-.slice", "-.slice"},
		// The kubelet 1.37 passes the slice's cgroup path.
		{"aurae.slice", "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0c2b.slice", "kubepods-besteffort-pod0c2b.slice"},
	} {
		got, err := SystemdParent(c.root, c.parent)
		if err != nil || got != c.want {
			t.Errorf("SystemdParent(%q, %q) = %q, %v; want %q", c.root, c.parent, got, err, c.want)
		}
	}
	for _, bad := range []string{"/kubepods/burstable/pod1", "kubepods/pod1", "a--b.slice", "x y.slice",
		"/kubepods.slice/kubepods-burstable-pod1.slice", "/elsewhere/kubepods-pod1.slice"} {
		if _, err := SystemdParent("aurae.slice", bad); !errors.Is(err, ErrNotSlice) {
			t.Errorf("SystemdParent(%q): %v, want ErrNotSlice", bad, err)
		}
	}
}

func TestPodSliceAndScopes(t *testing.T) {
	s, err := PodSlice("kubepods-besteffort-pod7.slice", "0a1b")
	if err != nil || s != "kubepods-besteffort-pod7-aurae_0a1b.slice" {
		t.Fatalf("PodSlice = %q, %v", s, err)
	}
	dir, err := ExpandSlice(s)
	if want := "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod7.slice/kubepods-besteffort-pod7-aurae_0a1b.slice"; err != nil || dir != want {
		t.Errorf("ExpandSlice(%q) = %q, %v; want %q", s, dir, err, want)
	}
	// A '-' of a pod id must not add a level.
	s, err = PodSlice("aurae-pods.slice", "web-1")
	if err != nil || s != `aurae-pods-aurae_web\x2d1.slice` {
		t.Errorf("PodSlice with '-' = %q, %v", s, err)
	}
	if s, err := PodSlice("-.slice", "p"); err != nil || s != "aurae_p.slice" {
		t.Errorf("PodSlice in the root slice = %q, %v", s, err)
	}
	if _, err := PodSlice("aurae.slice", strings.Repeat("f", 250)); !errors.Is(err, ErrNotSlice) {
		t.Errorf("an over-long slice name: %v", err)
	}
	if got := SystemdCgroupsPath("aurae-pods-aurae_p.slice", "c1"); got != "aurae-pods-aurae_p.slice:aurae:c1" {
		t.Errorf("SystemdCgroupsPath = %q", got)
	}
	if got := ContainerScope("c1"); got != "aurae-c1.scope" {
		t.Errorf("ContainerScope = %q", got)
	}
	if got := InfraScope("p"); got != "aurae_infra-p.scope" {
		t.Errorf("InfraScope = %q", got)
	}
}
