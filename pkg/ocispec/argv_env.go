package ocispec

import (
	"path"
	"strings"

	imagespec "github.com/opencontainers/image-spec/specs-go/v1"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// DefaultPath is the PATH of a container whose image and request set none
// (containerd's and Docker's default).
const DefaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Args returns the container's argv by Docker's rules, which containerd's
// CRI follows: a command in the request replaces the image's entrypoint and
// drops the image's cmd; args in the request replace the image's cmd; argv is
// entrypoint + cmd. An image entrypoint of [""] counts as none.
func Args(config *runtimeapi.ContainerConfig, image imagespec.ImageConfig) ([]string, error) {
	command, args := config.GetCommand(), config.GetArgs()
	if len(command) == 0 {
		if len(args) == 0 {
			args = image.Cmd
		}
		if len(image.Entrypoint) != 1 || image.Entrypoint[0] != "" {
			command = image.Entrypoint
		}
	}
	argv := make([]string, 0, len(command)+len(args))
	argv = append(append(argv, command...), args...)
	if len(argv) == 0 {
		return nil, invalid("container %q: no command specified: neither the request nor the image has an entrypoint or a cmd",
			config.GetMetadata().GetName())
	}
	return argv, nil
}

func setArgs(in Input, s *specs.Spec) error {
	argv, err := Args(in.Config, in.Image)
	if err != nil {
		return err
	}
	s.Process.Args = argv
	return nil
}

// setEnv builds the environment as containerd does: PATH first (the
// default, replaced in place by an image or request PATH), HOSTNAME, the
// image's variables, then the request's, each overriding an earlier one of
// the same name in place. An entry without "=" removes the variable.
func setEnv(in Input, s *specs.Spec) error {
	env := []string{DefaultPath, "HOSTNAME=" + hostname(in)}
	env = mergeEnv(env, in.Image.Env)
	overrides := make([]string, 0, len(in.Config.GetEnvs()))
	for _, kv := range in.Config.GetEnvs() {
		if kv.GetKey() == "" || strings.Contains(kv.GetKey(), "=") {
			return invalid("environment variable name %q is empty or contains \"=\"", kv.GetKey())
		}
		overrides = append(overrides, kv.GetKey()+"="+string(kv.GetValue()))
	}
	s.Process.Env = mergeEnv(env, overrides)
	return nil
}

// mergeEnv returns base with each of overrides replacing the variable of the
// same name in place, or appended; "NAME" without "=" removes NAME.
func mergeEnv(base, overrides []string) []string {
	out := append([]string(nil), base...)
	index := make(map[string]int, len(out))
	for i, e := range out {
		k, _, _ := strings.Cut(e, "=")
		index[k] = i
	}
	removed := false
	for _, e := range overrides {
		k, _, ok := strings.Cut(e, "=")
		i, exists := index[k]
		switch {
		case !ok:
			if exists {
				out[i] = ""
				removed = true
			}
		case exists:
			out[i] = e
		default:
			index[k] = len(out)
			out = append(out, e)
		}
	}
	if !removed {
		return out
	}
	kept := out[:0]
	for _, e := range out {
		if e != "" {
			kept = append(kept, e)
		}
	}
	return kept
}

// setCwd sets the working directory: the request's, else the image's, else
// "/". A relative image WorkingDir is taken from "/" as Docker does; a
// relative one in the request is refused, since runc would refuse it later.
func setCwd(in Input, s *specs.Spec) error {
	cwd := "/"
	switch {
	case in.Config.GetWorkingDir() != "":
		cwd = in.Config.GetWorkingDir()
		if !path.IsAbs(cwd) {
			return invalid("working dir %q is not absolute", cwd)
		}
	case in.Image.WorkingDir != "":
		cwd = in.Image.WorkingDir
	}
	s.Process.Cwd = path.Join("/", cwd)
	return nil
}
