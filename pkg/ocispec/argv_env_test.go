package ocispec

import (
	"slices"
	"testing"

	"github.com/containerd/errdefs"
	imagespec "github.com/opencontainers/image-spec/specs-go/v1"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

func TestArgs(t *testing.T) {
	tests := []struct {
		name             string
		entrypoint, cmd  []string
		command, args    []string
		want             []string
		wantInvalidInput bool
	}{
		{name: "image entrypoint and cmd", entrypoint: []string{"/ep"}, cmd: []string{"a", "b"}, want: []string{"/ep", "a", "b"}},
		{name: "image cmd only", cmd: []string{"/bin/sh", "-c", "x"}, want: []string{"/bin/sh", "-c", "x"}},
		{name: "image entrypoint only", entrypoint: []string{"/ep", "x"}, want: []string{"/ep", "x"}},
		{name: "command replaces entrypoint and drops cmd", entrypoint: []string{"/ep"}, cmd: []string{"a"}, command: []string{"/c"}, want: []string{"/c"}},
		{name: "command and args", entrypoint: []string{"/ep"}, cmd: []string{"a"}, command: []string{"/c"}, args: []string{"x"}, want: []string{"/c", "x"}},
		{name: "args replace cmd, entrypoint kept", entrypoint: []string{"/ep"}, cmd: []string{"a"}, args: []string{"x", "y"}, want: []string{"/ep", "x", "y"}},
		{name: "args without image entrypoint", cmd: []string{"a"}, args: []string{"/x"}, want: []string{"/x"}},
		{name: "empty-string entrypoint is none", entrypoint: []string{""}, cmd: []string{"/a"}, want: []string{"/a"}},
		{name: "nothing", wantInvalidInput: true},
		{name: "empty-string entrypoint and nothing else", entrypoint: []string{""}, wantInvalidInput: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := testInput()
			in.Image = imagespec.ImageConfig{Entrypoint: tc.entrypoint, Cmd: tc.cmd}
			in.Config.Command, in.Config.Args = tc.command, tc.args
			s, err := Generate(in)
			if tc.wantInvalidInput {
				checkErr(t, err, errdefs.ErrInvalidArgument)
				return
			}
			checkErr(t, err, nil)
			if !slices.Equal(s.Process.Args, tc.want) {
				t.Errorf("args %q, want %q", s.Process.Args, tc.want)
			}
		})
	}
}

func TestArgsDoNotAliasImage(t *testing.T) {
	image := imagespec.ImageConfig{Entrypoint: []string{"/ep"}, Cmd: []string{"a"}}
	argv, err := Args(&runtimeapi.ContainerConfig{}, image)
	if err != nil {
		t.Fatal(err)
	}
	argv[0] = "changed"
	if image.Entrypoint[0] != "/ep" {
		t.Error("Args returned the image's own slice")
	}
}

func kvs(pairs ...string) []*runtimeapi.KeyValue {
	var out []*runtimeapi.KeyValue
	for i := 0; i+1 < len(pairs); i += 2 {
		out = append(out, &runtimeapi.KeyValue{Key: pairs[i], Value: []byte(pairs[i+1])})
	}
	return out
}

func TestEnv(t *testing.T) {
	tests := []struct {
		name     string
		image    []string
		envs     []*runtimeapi.KeyValue
		hostname string
		want     []string
		invalid  bool
	}{
		{
			name: "defaults",
			want: []string{DefaultPath, "HOSTNAME=web-host"},
		},
		{
			name:  "image PATH replaces the default in place",
			image: []string{"PATH=/opt/bin", "A=1"},
			want:  []string{"PATH=/opt/bin", "HOSTNAME=web-host", "A=1"},
		},
		{
			name:  "request overrides image by key, in place",
			image: []string{"A=1", "B=2"},
			envs:  kvs("B", "3", "C", "x=y"),
			want:  []string{DefaultPath, "HOSTNAME=web-host", "A=1", "B=3", "C=x=y"},
		},
		{
			name:  "request PATH and HOSTNAME win",
			image: []string{"PATH=/img"},
			envs:  kvs("PATH", "/req", "HOSTNAME", "mine"),
			want:  []string{"PATH=/req", "HOSTNAME=mine"},
		},
		{
			name:  "image entry without = unsets",
			image: []string{"HOSTNAME"},
			want:  []string{DefaultPath},
		},
		{
			name:  "empty value is kept",
			envs:  kvs("E", ""),
			want:  []string{DefaultPath, "HOSTNAME=web-host", "E="},
			image: nil,
		},
		{
			name:     "Input.Hostname wins over the sandbox's",
			hostname: "other",
			want:     []string{DefaultPath, "HOSTNAME=other"},
		},
		{
			name:    "name with = refused",
			envs:    kvs("A=B", "v"),
			invalid: true,
		},
		{
			name:    "empty name refused",
			envs:    kvs("", "v"),
			invalid: true,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := testInput()
			in.Image.Env = tc.image
			in.Config.Envs = tc.envs
			in.Pod.Hostname = tc.hostname
			s, err := Generate(in)
			if tc.invalid {
				checkErr(t, err, errdefs.ErrInvalidArgument)
				return
			}
			checkErr(t, err, nil)
			if !slices.Equal(s.Process.Env, tc.want) {
				t.Errorf("env %q, want %q", s.Process.Env, tc.want)
			}
		})
	}
}

func TestMergeEnv(t *testing.T) {
	got := mergeEnv([]string{"A=1", "B=2", "C=3"}, []string{"B", "D=4", "A=0", "X"})
	if want := []string{"A=0", "C=3", "D=4"}; !slices.Equal(got, want) {
		t.Errorf("mergeEnv = %q, want %q", got, want)
	}
}

func TestWorkingDir(t *testing.T) {
	tests := []struct {
		name, image, config, want string
		invalid                   bool
	}{
		{name: "default", want: "/"},
		{name: "image", image: "/srv/app/", want: "/srv/app"},
		{name: "relative image dir from /", image: "app", want: "/app"},
		{name: "request wins", image: "/srv", config: "/work", want: "/work"},
		{name: "relative request refused", config: "work", invalid: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := testInput()
			in.Image.WorkingDir = tc.image
			in.Config.WorkingDir = tc.config
			s, err := Generate(in)
			if tc.invalid {
				checkErr(t, err, errdefs.ErrInvalidArgument)
				return
			}
			checkErr(t, err, nil)
			if s.Process.Cwd != tc.want {
				t.Errorf("cwd %q, want %q", s.Process.Cwd, tc.want)
			}
		})
	}
}
