package cri

import (
	"context"
	"fmt"

	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Exec implements RuntimeService.Exec: it checks the request and answers
// the stream server's URL, where the session runs once the client connects.
func (r *Runtime) Exec(ctx context.Context, req *runtimeapi.ExecRequest) (*runtimeapi.ExecResponse, error) {
	if err := r.checkReady(); err != nil {
		return nil, err
	}
	if len(req.GetCmd()) == 0 {
		return nil, fmt.Errorf("exec command is empty: %w", errInvalid)
	}
	if err := checkStreams("exec", req.GetStdin(), req.GetStdout(), req.GetStderr(), req.GetTty()); err != nil {
		return nil, err
	}
	_, c, err := r.runningContainer(req.GetContainerId())
	if err != nil {
		return nil, err
	}
	srv, err := r.streamServer()
	if err != nil {
		return nil, err
	}
	full := proto.Clone(req).(*runtimeapi.ExecRequest)
	full.ContainerId = c.ID
	resp, err := srv.GetExec(full)
	if err != nil {
		return nil, fmt.Errorf("exec in container %s: %w", c.ID, err)
	}
	return resp, nil
}

// Attach implements RuntimeService.Attach, as Exec.
func (r *Runtime) Attach(ctx context.Context, req *runtimeapi.AttachRequest) (*runtimeapi.AttachResponse, error) {
	if err := r.checkReady(); err != nil {
		return nil, err
	}
	if err := checkStreams("attach", req.GetStdin(), req.GetStdout(), req.GetStderr(), req.GetTty()); err != nil {
		return nil, err
	}
	_, c, err := r.runningContainer(req.GetContainerId())
	if err != nil {
		return nil, err
	}
	srv, err := r.streamServer()
	if err != nil {
		return nil, err
	}
	full := proto.Clone(req).(*runtimeapi.AttachRequest)
	full.ContainerId = c.ID
	resp, err := srv.GetAttach(full)
	if err != nil {
		return nil, fmt.Errorf("attach to container %s: %w", c.ID, err)
	}
	return resp, nil
}

// checkStreams refuses a session that asks for no stream, or for stderr on
// a terminal (which has one output).
func checkStreams(what string, stdin, stdout, stderr, tty bool) error {
	if !stdin && !stdout && !stderr {
		return fmt.Errorf("%s: one of stdin, stdout and stderr must be requested: %w", what, errInvalid)
	}
	if tty && stderr {
		return fmt.Errorf("%s: tty and stderr cannot both be requested (a terminal has one output): %w", what, errInvalid)
	}
	return nil
}
