package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	observev0 "github.com/aurae-runtime/aurae-cri/api/observe/v0"
)

var observeResource = resource{name: "observe", short: "streams: auraed's log, a process's output, signals", commands: []command{
	{use: "logs", short: "auraed's log records as they happen (until ^C)", setup: observeLogs, follow: true},
	{use: "output PID", short: "a cell process's output: the lines still buffered, then new ones until it exits", args: 1, setup: observeOutput, follow: true},
	{use: "signals", short: "the POSIX signals that reach a workload's processes (until ^C)", setup: observeSignals, follow: true},
}}

// recvAll prints each message of a stream until it ends or ^C.
func recvAll[T any](ctx context.Context, recv func() (T, error), print func(T) error) error {
	for {
		m, err := recv()
		if errors.Is(err, io.EOF) || (err != nil && ctx.Err() != nil) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := print(m); err != nil {
			return err
		}
	}
}

func logLine(a *app) func(*observev0.LogItem) error {
	return func(it *observev0.LogItem) error {
		return a.emitLine(it, it.GetLine())
	}
}

func observeLogs(*flag.FlagSet) func(context.Context, *app, []string) error {
	return func(ctx context.Context, a *app, _ []string) error {
		st, err := a.client.Observe.GetAuraeDaemonLogStream(ctx, &observev0.GetAuraeDaemonLogStreamRequest{})
		if err != nil {
			return err
		}
		return recvAll(ctx, st.Recv, logLine(a))
	}
}

func observeOutput(fs *flag.FlagSet) func(context.Context, *app, []string) error {
	stderr := fs.Bool("stderr", false, "the process's stderr instead of its stdout")
	return func(ctx context.Context, a *app, args []string) error {
		var pid int64
		if _, err := fmt.Sscan(args[0], &pid); err != nil || pid <= 0 {
			return usagef("PID %q is not a process id", args[0])
		}
		ch := observev0.LogChannelType_LOG_CHANNEL_TYPE_STDOUT
		if *stderr {
			ch = observev0.LogChannelType_LOG_CHANNEL_TYPE_STDERR
		}
		st, err := a.client.Observe.GetSubProcessStream(ctx, &observev0.GetSubProcessStreamRequest{ChannelType: ch, ProcessId: pid})
		if err != nil {
			return err
		}
		return recvAll(ctx, st.Recv, logLine(a))
	}
}

func observeSignals(fs *flag.FlagSet) func(context.Context, *app, []string) error {
	cell := fs.String("cell", "", "the cell's processes")
	pod := fs.String("pod", "", "the pod's processes")
	vm := fs.String("vm", "", "the VM's processes")
	return func(ctx context.Context, a *app, _ []string) error {
		ref := &observev0.WorkloadReference{}
		n := 0
		for _, w := range []struct {
			id  string
			typ observev0.WorkloadType
		}{{*cell, observev0.WorkloadType_WORKLOAD_TYPE_CELL}, {*pod, observev0.WorkloadType_WORKLOAD_TYPE_POD}, {*vm, observev0.WorkloadType_WORKLOAD_TYPE_VM}} {
			if w.id != "" {
				ref.Id, ref.WorkloadType = w.id, w.typ
				n++
			}
		}
		if n != 1 {
			return usagef("name one workload: --cell, --pod or --vm")
		}
		st, err := a.client.Observe.GetPosixSignalsStream(ctx, &observev0.GetPosixSignalsStreamRequest{Workload: ref})
		if err != nil {
			return err
		}
		return recvAll(ctx, st.Recv, func(m *observev0.GetPosixSignalsStreamResponse) error {
			s := m.GetSignal()
			return a.emitLine(m, fmt.Sprintf("%s pid %d (%s) signal %d", time.Unix(0, s.GetTimestamp()).Format(time.RFC3339Nano),
				s.GetProcessId(), orDash(s.GetExecutableName()), s.GetSignal()))
		})
	}
}
