package ocispec

import (
	"slices"
	"testing"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

func TestUserNamespace(t *testing.T) {
	const userns = "/run/aurae/pods/pod1/ns/user"
	podIDs := []specs.LinuxIDMapping{{ContainerID: 0, HostID: 65536, Size: 65536}}
	criIDs := func(h uint32) []*runtimeapi.IDMapping {
		return []*runtimeapi.IDMapping{{ContainerId: 0, HostId: h, Length: 65536}}
	}
	pod := &runtimeapi.UserNamespace{Mode: runtimeapi.NamespaceMode_POD, Uids: criIDs(65536), Gids: criIDs(65536)}
	tests := []struct {
		name      string
		podHasOne bool
		sandbox   *runtimeapi.UserNamespace
		container *runtimeapi.UserNamespace
		mounts    []*runtimeapi.Mount
		want      bool
		wantErr   error
	}{
		{name: "none", want: false},
		{name: "node", sandbox: &runtimeapi.UserNamespace{Mode: runtimeapi.NamespaceMode_NODE}, container: &runtimeapi.UserNamespace{Mode: runtimeapi.NamespaceMode_NODE}},
		{name: "pod, as the kubelet asks", podHasOne: true, sandbox: pod, container: pod, want: true},
		{name: "pod, the sandbox's options only", podHasOne: true, sandbox: pod, want: true},
		{name: "pod, mappings left to the pod", podHasOne: true, sandbox: pod, container: &runtimeapi.UserNamespace{Mode: runtimeapi.NamespaceMode_POD}, want: true},
		{name: "pod, the pod's id-mapped volume", podHasOne: true, sandbox: pod, container: pod, want: true,
			mounts: []*runtimeapi.Mount{{ContainerPath: "/data", HostPath: "/var/data", UidMappings: criIDs(65536), GidMappings: criIDs(65536)}}},
		{name: "pod, a volume with other mappings", podHasOne: true, sandbox: pod, container: pod, wantErr: errdefs.ErrNotImplemented,
			mounts: []*runtimeapi.Mount{{ContainerPath: "/data", HostPath: "/var/data", UidMappings: criIDs(1000), GidMappings: criIDs(1000)}}},
		{name: "other mappings than the pod's", podHasOne: true, sandbox: pod, wantErr: errdefs.ErrInvalidArgument,
			container: &runtimeapi.UserNamespace{Mode: runtimeapi.NamespaceMode_POD, Uids: criIDs(1000), Gids: criIDs(1000)}},
		{name: "pod mode, the pod has none", sandbox: pod, container: pod, wantErr: errdefs.ErrInvalidArgument},
		{name: "node mode in a pod with one", podHasOne: true, sandbox: pod, container: &runtimeapi.UserNamespace{Mode: runtimeapi.NamespaceMode_NODE}, wantErr: errdefs.ErrInvalidArgument},
		{name: "node mode with mappings", container: &runtimeapi.UserNamespace{Mode: runtimeapi.NamespaceMode_NODE, Uids: criIDs(1000)}, wantErr: errdefs.ErrInvalidArgument},
		{name: "container mode", container: &runtimeapi.UserNamespace{Mode: runtimeapi.NamespaceMode_CONTAINER}, wantErr: errdefs.ErrInvalidArgument},
		{name: "target mode", container: &runtimeapi.UserNamespace{Mode: runtimeapi.NamespaceMode_TARGET}, wantErr: errdefs.ErrInvalidArgument},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := testInput()
			if tc.sandbox != nil {
				setSandboxNS(&in, &runtimeapi.NamespaceOption{UsernsOptions: tc.sandbox})
			}
			if tc.container != nil {
				linuxSC(&in).NamespaceOptions = &runtimeapi.NamespaceOption{UsernsOptions: tc.container}
			}
			if tc.podHasOne {
				in.Pod.UserNamespace, in.Pod.UIDMappings, in.Pod.GIDMappings = userns, podIDs, podIDs
			}
			in.Pod.HostsPath = "/run/aurae/pods/pod1/hosts"
			in.Config.Mounts = tc.mounts
			s, err := Generate(in)
			if !checkErr(t, err, tc.wantErr) {
				return
			}
			got, ok := nsMap(s.Linux.Namespaces)[specs.UserNamespace]
			if ok != tc.want || (ok && got != userns) {
				t.Fatalf("user namespace %q (%t), want the pod's: %t", got, ok, tc.want)
			}
			for _, m := range s.Mounts {
				mapped := len(m.UIDMappings) > 0
				switch {
				case m.Type == "bind" && tc.want && (!slices.Equal(m.UIDMappings, podIDs) || !slices.Equal(m.GIDMappings, podIDs)):
					t.Errorf("bind mount %s not id-mapped with the pod's mappings: %v %v", m.Destination, m.UIDMappings, m.GIDMappings)
				case (m.Type != "bind" || !tc.want) && mapped:
					t.Errorf("mount %s id-mapped: %v", m.Destination, m.UIDMappings)
				}
			}
		})
	}
}
