package ocispec

import (
	"maps"
	"slices"
	"testing"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

func nsMap(ns []specs.LinuxNamespace) map[specs.LinuxNamespaceType]string {
	m := make(map[specs.LinuxNamespaceType]string, len(ns))
	for _, n := range ns {
		m[n.Type] = n.Path
	}
	return m
}

func TestNamespaces(t *testing.T) {
	const (
		net = "/run/aurae/netns/pod1"
		ipc = "/run/aurae/ipcns/pod1"
		uts = "/run/aurae/utsns/pod1"
		pid = "/run/aurae/pidns/pod1"
	)
	tests := []struct {
		name         string
		sandbox      *runtimeapi.NamespaceOption
		container    *runtimeapi.NamespaceOption
		pidPath      string
		noPaths      bool
		privileged   bool
		want         map[specs.LinuxNamespaceType]string
		wantHostname string
		wantErr      error
	}{
		{
			name: "pod namespaces, pid of the pod without a path is private",
			want: map[specs.LinuxNamespaceType]string{
				specs.PIDNamespace: "", specs.IPCNamespace: ipc, specs.UTSNamespace: uts,
				specs.NetworkNamespace: net, specs.MountNamespace: "", specs.CgroupNamespace: "",
			},
			wantHostname: "web-host",
		},
		{
			name:      "pid shared with the pod",
			container: &runtimeapi.NamespaceOption{Pid: runtimeapi.NamespaceMode_POD},
			pidPath:   pid,
			want: map[specs.LinuxNamespaceType]string{
				specs.PIDNamespace: pid, specs.IPCNamespace: ipc, specs.UTSNamespace: uts,
				specs.NetworkNamespace: net, specs.MountNamespace: "", specs.CgroupNamespace: "",
			},
			wantHostname: "web-host",
		},
		{
			name:      "pid of the container's own even with a pod path",
			container: &runtimeapi.NamespaceOption{Pid: runtimeapi.NamespaceMode_CONTAINER},
			pidPath:   pid,
			want: map[specs.LinuxNamespaceType]string{
				specs.PIDNamespace: "", specs.IPCNamespace: ipc, specs.UTSNamespace: uts,
				specs.NetworkNamespace: net, specs.MountNamespace: "", specs.CgroupNamespace: "",
			},
			wantHostname: "web-host",
		},
		{
			name:    "pid mode from the sandbox when the container names none",
			sandbox: &runtimeapi.NamespaceOption{Pid: runtimeapi.NamespaceMode_NODE},
			pidPath: pid,
			want: map[specs.LinuxNamespaceType]string{
				specs.IPCNamespace: ipc, specs.UTSNamespace: uts,
				specs.NetworkNamespace: net, specs.MountNamespace: "", specs.CgroupNamespace: "",
			},
			wantHostname: "web-host",
		},
		{
			name:    "host network: no net, no uts, no hostname",
			sandbox: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE},
			want: map[specs.LinuxNamespaceType]string{
				specs.PIDNamespace: "", specs.IPCNamespace: ipc, specs.MountNamespace: "", specs.CgroupNamespace: "",
			},
		},
		{
			name:    "host ipc and pid",
			sandbox: &runtimeapi.NamespaceOption{Ipc: runtimeapi.NamespaceMode_NODE, Pid: runtimeapi.NamespaceMode_NODE},
			container: &runtimeapi.NamespaceOption{
				Pid: runtimeapi.NamespaceMode_NODE,
				// the sandbox decides about ipc
				Ipc: runtimeapi.NamespaceMode_POD,
			},
			want: map[specs.LinuxNamespaceType]string{
				specs.UTSNamespace: uts, specs.NetworkNamespace: net, specs.MountNamespace: "", specs.CgroupNamespace: "",
			},
			wantHostname: "web-host",
		},
		{
			name:    "no paths: new namespaces",
			noPaths: true,
			want: map[specs.LinuxNamespaceType]string{
				specs.PIDNamespace: "", specs.IPCNamespace: "", specs.UTSNamespace: "",
				specs.NetworkNamespace: "", specs.MountNamespace: "", specs.CgroupNamespace: "",
			},
			wantHostname: "web-host",
		},
		{
			name:       "privileged: no cgroup namespace",
			privileged: true,
			want: map[specs.LinuxNamespaceType]string{
				specs.PIDNamespace: "", specs.IPCNamespace: ipc, specs.UTSNamespace: uts,
				specs.NetworkNamespace: net, specs.MountNamespace: "",
			},
			wantHostname: "web-host",
		},
		{
			name:      "target pid namespace",
			container: &runtimeapi.NamespaceOption{Pid: runtimeapi.NamespaceMode_TARGET, TargetId: "other"},
			pidPath:   "/proc/42/ns/pid",
			want: map[specs.LinuxNamespaceType]string{
				specs.PIDNamespace: "/proc/42/ns/pid", specs.IPCNamespace: ipc, specs.UTSNamespace: uts,
				specs.NetworkNamespace: net, specs.MountNamespace: "", specs.CgroupNamespace: "",
			},
			wantHostname: "web-host",
		},
		{
			name:      "target without a path",
			container: &runtimeapi.NamespaceOption{Pid: runtimeapi.NamespaceMode_TARGET, TargetId: "other"},
			wantErr:   errdefs.ErrInvalidArgument,
		},
		{
			name:      "unknown pid mode",
			container: &runtimeapi.NamespaceOption{Pid: 42},
			wantErr:   errdefs.ErrInvalidArgument,
		},
		{
			name:      "node pid in a pod that does not use the node's",
			container: &runtimeapi.NamespaceOption{Pid: runtimeapi.NamespaceMode_NODE},
			wantErr:   errdefs.ErrInvalidArgument,
		},
		{
			name:      "target without a target id",
			container: &runtimeapi.NamespaceOption{Pid: runtimeapi.NamespaceMode_TARGET},
			pidPath:   "/proc/42/ns/pid",
			wantErr:   errdefs.ErrInvalidArgument,
		},
		{
			name: "user namespace POD in a pod without one",
			container: &runtimeapi.NamespaceOption{UsernsOptions: &runtimeapi.UserNamespace{
				Mode: runtimeapi.NamespaceMode_POD,
			}},
			wantErr: errdefs.ErrInvalidArgument,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := testInput()
			if tc.sandbox != nil {
				setSandboxNS(&in, tc.sandbox)
			}
			if tc.container != nil {
				linuxSC(&in).NamespaceOptions = tc.container
			}
			if tc.privileged {
				privileged(&in)
			}
			if tc.container.GetPid() == runtimeapi.NamespaceMode_TARGET {
				in.Pod.PIDTarget = tc.pidPath
			} else if !in.Pod.PID.Node {
				in.Pod.PID.Path = tc.pidPath
			}
			if tc.noPaths {
				in.Pod.Network.Path, in.Pod.IPC.Path, in.Pod.UTS.Path = "", "", ""
			}
			s, err := Generate(in)
			if !checkErr(t, err, tc.wantErr) {
				return
			}
			if got := nsMap(s.Linux.Namespaces); !maps.Equal(got, tc.want) {
				t.Errorf("namespaces %v, want %v", got, tc.want)
			}
			if len(s.Linux.Namespaces) != len(tc.want) {
				t.Errorf("duplicate namespaces: %v", s.Linux.Namespaces)
			}
			if s.Hostname != tc.wantHostname {
				t.Errorf("hostname %q, want %q", s.Hostname, tc.wantHostname)
			}
		})
	}
}

func TestSysctls(t *testing.T) {
	tests := []struct {
		name    string
		sandbox *runtimeapi.NamespaceOption
		sysctls map[string]string
		want    map[string]string
		wantErr bool
	}{
		{name: "none"},
		{
			name:    "namespaced ones in own namespaces",
			sysctls: map[string]string{"net.ipv4.ip_forward": "1", "kernel.shmmax": "1000", "fs.mqueue.msg_max": "20", "kernel.sem": "1 2 3 4", "kernel.domainname": "example"},
			want:    map[string]string{"net.ipv4.ip_forward": "1", "kernel.shmmax": "1000", "fs.mqueue.msg_max": "20", "kernel.sem": "1 2 3 4", "kernel.domainname": "example"},
		},
		{
			name:    "slash form",
			sysctls: map[string]string{"net/ipv4/conf/eth0.100/forwarding": "1"},
			want:    map[string]string{"net.ipv4.conf.eth0/100.forwarding": "1"},
		},
		{name: "net in host network", sandbox: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE}, sysctls: map[string]string{"net.core.somaxconn": "1024"}, wantErr: true},
		{name: "domainname in host uts", sandbox: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE}, sysctls: map[string]string{"kernel.domainname": "x"}, wantErr: true},
		{name: "ipc in host ipc", sandbox: &runtimeapi.NamespaceOption{Ipc: runtimeapi.NamespaceMode_NODE}, sysctls: map[string]string{"kernel.msgmax": "1"}, wantErr: true},
		{name: "ipc allowed with host network", sandbox: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE}, sysctls: map[string]string{"kernel.msgmax": "1"}, want: map[string]string{"kernel.msgmax": "1"}},
		{name: "not namespaced", sysctls: map[string]string{"vm.swappiness": "1"}, wantErr: true},
		{name: "kernel.hostname", sysctls: map[string]string{"kernel.hostname": "x"}, wantErr: true},
		{name: "unknown kernel.shm prefix", sysctls: map[string]string{"kernel.shmfoo": "1"}, wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := testInput()
			if tc.sandbox != nil {
				setSandboxNS(&in, tc.sandbox)
			}
			if tc.sysctls != nil {
				if in.Sandbox.Linux == nil {
					in.Sandbox.Linux = &runtimeapi.LinuxPodSandboxConfig{}
				}
				in.Sandbox.Linux.Sysctls = tc.sysctls
			}
			s, err := Generate(in)
			if tc.wantErr {
				checkErr(t, err, errdefs.ErrInvalidArgument)
				return
			}
			checkErr(t, err, nil)
			if !maps.Equal(s.Linux.Sysctl, tc.want) {
				t.Errorf("sysctls %v, want %v", s.Linux.Sysctl, tc.want)
			}
		})
	}
}

func TestHostnameFallback(t *testing.T) {
	in := testInput()
	in.Sandbox.Hostname = ""
	in.Pod.Hostname = "given"
	if s := mustGenerate(t, in); s.Hostname != "given" || !slices.Contains(s.Process.Env, "HOSTNAME=given") {
		t.Errorf("hostname %q env %q", s.Hostname, s.Process.Env)
	}
}
