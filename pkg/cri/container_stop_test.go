package cri

import (
	"encoding/json"
	"slices"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/pkg/ocispec"
	"github.com/aurae-runtime/aurae-cri/pkg/sandbox"
)

func TestStopSignal(t *testing.T) {
	tests := []struct {
		name    string
		cfg     runtimeapi.Signal
		image   string
		want    string
		wantErr bool
	}{
		{name: "default", want: ""},
		{name: "config", cfg: runtimeapi.Signal_SIGNAL_SIGQUIT, want: "SIGQUIT"},
		{name: "config wins over image", cfg: runtimeapi.Signal_SIGNAL_SIGUSR1, image: "SIGQUIT", want: "SIGUSR1"},
		{name: "image name", image: "SIGQUIT", want: "SIGQUIT"},
		{name: "image short name", image: "usr2", want: "SIGUSR2"},
		{name: "image number", image: "3", want: "SIGQUIT"},
		{name: "SIGTERM is the default", image: "SIGTERM", want: ""},
		{name: "alias", cfg: runtimeapi.Signal_SIGNAL_SIGCLD, want: "SIGCHLD"},
		{name: "real-time plus", cfg: runtimeapi.Signal_SIGNAL_SIGRTMINPLUS3, want: "SIGRTMIN+3"},
		{name: "real-time minus", cfg: runtimeapi.Signal_SIGNAL_SIGRTMAXMINUS1, want: "SIGRTMIN+29"},
		{name: "unknown image signal", image: "SIGFLY", wantErr: true},
		{name: "unknown enum", cfg: 999, wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := stopSignal(tc.cfg, tc.image)
			if tc.wantErr {
				if code(err).String() != "InvalidArgument" {
					t.Fatalf("error %v, want InvalidArgument", err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("stopSignal = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
	// Every CRI signal survives the round trip to a name and back.
	for v := range runtimeapi.Signal_name {
		sig := runtimeapi.Signal(v)
		if sig == runtimeapi.Signal_SIGNAL_RUNTIME_DEFAULT {
			continue
		}
		name, err := stopSignal(sig, "")
		if err != nil {
			t.Fatalf("%s: %v", sig, err)
		}
		back := criSignal(name)
		want := sig
		switch sig {
		case runtimeapi.Signal_SIGNAL_SIGCLD:
			want = runtimeapi.Signal_SIGNAL_SIGCHLD
		case runtimeapi.Signal_SIGNAL_SIGIOT:
			want = runtimeapi.Signal_SIGNAL_SIGABRT
		case runtimeapi.Signal_SIGNAL_SIGPOLL:
			want = runtimeapi.Signal_SIGNAL_SIGIO
		}
		if back != want {
			t.Errorf("%s → %q → %s", sig, name, back)
		}
	}
}

// TestStopContainerSignalAndStatus: StopContainer hands the controller the
// stop signal resolved at creation; ContainerStatus reports it and the
// spec's user; Status reports the features.
func TestStopContainerSignalAndStatus(t *testing.T) {
	f := newFixture(t, true)
	pod, err := f.rt.RunPodSandbox(t.Context(), &runtimeapi.RunPodSandboxRequest{Config: podConfig("s")})
	if err != nil {
		t.Fatal(err)
	}
	spec, _ := json.Marshal(&specs.Spec{Process: &specs.Process{User: specs.User{UID: 1000, GID: 3000, AdditionalGids: []uint32{3000, 4000}}}})
	c := &sandbox.Container{ID: "c1", SandboxID: pod.GetPodSandboxId(), Name: "c1_s", Config: &runtimeapi.ContainerConfig{Metadata: &runtimeapi.ContainerMetadata{Name: "c1"}},
		Spec: spec, StopSignal: "SIGQUIT", CreatedAt: time.Now(), Status: sandbox.ContainerStatus{State: runtimeapi.ContainerState_CONTAINER_CREATED}}
	if err := f.store.AddContainer(c); err != nil {
		t.Fatal(err)
	}
	st, err := f.rt.ContainerStatus(t.Context(), &runtimeapi.ContainerStatusRequest{ContainerId: "c1"})
	if err != nil {
		t.Fatal(err)
	}
	u := st.GetStatus().GetUser().GetLinux()
	if u.GetUid() != 1000 || u.GetGid() != 3000 || !slices.Equal(u.GetSupplementalGroups(), []int64{3000, 4000}) {
		t.Errorf("user %v", u)
	}
	if st.GetStatus().GetStopSignal() != runtimeapi.Signal_SIGNAL_SIGQUIT {
		t.Errorf("stop signal %v", st.GetStatus().GetStopSignal())
	}
	if _, err := f.rt.StartContainer(t.Context(), &runtimeapi.StartContainerRequest{ContainerId: "c1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.rt.StopContainer(t.Context(), &runtimeapi.StopContainerRequest{ContainerId: "c1", Timeout: 1}); err != nil {
		t.Fatal(err)
	}
	f.ctrl.mu.Lock()
	got := slices.Clone(f.ctrl.stopSignals)
	f.ctrl.mu.Unlock()
	if !slices.Equal(got, []string{"SIGQUIT"}) {
		t.Errorf("stop signals %q", got)
	}

	resp, err := f.rt.Status(t.Context(), &runtimeapi.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if !resp.GetFeatures().GetSupplementalGroupsPolicy() {
		t.Error("supplemental_groups_policy not reported")
	}
	want := ocispec.ProbeHost().RecursiveReadOnly
	for _, h := range resp.GetRuntimeHandlers() {
		if h.GetFeatures().GetRecursiveReadOnlyMounts() != want {
			t.Errorf("handler %q: recursive_read_only_mounts %v, want %v", h.GetName(), h.GetFeatures().GetRecursiveReadOnlyMounts(), want)
		}
	}
}
