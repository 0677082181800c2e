package main

import (
	"context"
	"flag"

	podsv0 "github.com/aurae-runtime/aurae-cri/api/pods/v0"
)

// Pods and their containers are made by aurae-cri (or a client that
// writes OCI specs): aer shows and stops them.
var podsResource = resource{name: "pods", short: "pods and their containers (made by aurae-cri or the PodService)", commands: []command{
	{use: "list", short: "the pods with their containers", setup: podsList},
	{use: "status CONTAINER", short: "a container's status", args: 1, setup: podsStatus},
	{use: "stats CONTAINER", short: "a container's CPU time and memory working set", args: 1, setup: podsStats},
	{use: "exec CONTAINER COMMAND...", short: "run a command in a container, print its output, exit with its status (put the command after --)", args: -2, setup: podsExec},
	{use: "stop CONTAINER", short: "stop a container: its stop signal, then SIGKILL after --timeout", args: 1, setup: podsStop},
	{use: "remove CONTAINER", short: "remove a container (killed if it runs); its log stays", args: 1, setup: podsRemove},
	{use: "free POD", short: "stop and remove a pod's containers and free the pod", args: 1, setup: podsFree},
}}

func podsList(*flag.FlagSet) func(context.Context, *app, []string) error {
	return func(ctx context.Context, a *app, _ []string) error {
		all := &podsv0.ListPodsResponse{}
		for token := ""; ; {
			resp, err := a.client.Pods.ListPods(ctx, &podsv0.ListPodsRequest{PageToken: token})
			if err != nil {
				return err
			}
			all.Pods = append(all.Pods, resp.GetPods()...)
			if token = resp.GetNextPageToken(); token == "" {
				break
			}
		}
		return a.emit(all, []string{"POD", "CONTAINER", "STATE", "PID", "EXIT", "AGE"}, func() [][]string {
			var rows [][]string
			for _, p := range all.GetPods() {
				id := p.GetPod().GetId()
				if len(p.GetContainers()) == 0 {
					rows = append(rows, []string{id, "-", "-", "-", "-", since(p.GetCreatedAt())})
				}
				for _, c := range p.GetContainers() {
					rows = append(rows, containerRow(id, c))
				}
			}
			return rows
		})
	}
}

func containerRow(pod string, c *podsv0.ContainerStatus) []string {
	exit := "-"
	if c.GetState() == podsv0.ContainerState_CONTAINER_STATE_EXITED {
		exit = itoa(c.GetExitCode())
	}
	return []string{pod, c.GetId(), enumName(c.GetState().String(), "CONTAINER_STATE_"), itoa(c.GetPid()), exit, since(c.GetCreatedAt())}
}

func podsStatus(*flag.FlagSet) func(context.Context, *app, []string) error {
	return func(ctx context.Context, a *app, args []string) error {
		resp, err := a.client.Pods.ContainerStatus(ctx, &podsv0.ContainerStatusRequest{ContainerId: args[0]})
		if err != nil {
			return err
		}
		st := resp.GetStatus()
		return a.emit(resp, []string{"POD", "CONTAINER", "STATE", "PID", "EXIT", "AGE", "REASON", "LOG"}, func() [][]string {
			return [][]string{append(containerRow(st.GetPodId(), st), orDash(st.GetReason()), orDash(st.GetLogPath()))}
		})
	}
}

func podsStats(*flag.FlagSet) func(context.Context, *app, []string) error {
	return func(ctx context.Context, a *app, args []string) error {
		resp, err := a.client.Pods.ContainerStats(ctx, &podsv0.ContainerStatsRequest{ContainerId: args[0]})
		if err != nil {
			return err
		}
		return a.emit(resp, []string{"CONTAINER", "CPU (ns)", "MEMORY (bytes)"}, func() [][]string {
			return [][]string{{resp.GetContainerId(), itoa(resp.GetCpuUsageNanos()), itoa(resp.GetMemoryWorkingSetBytes())}}
		})
	}
}

func podsExec(fs *flag.FlagSet) func(context.Context, *app, []string) error {
	timeout := fs.Int64("exec-timeout", 0, "seconds the command may run (0: no bound but --timeout's)")
	return func(ctx context.Context, a *app, args []string) error {
		resp, err := a.client.Pods.ExecSync(ctx, &podsv0.ExecSyncRequest{ContainerId: args[0], Argv: args[1:], TimeoutSeconds: *timeout})
		if err != nil {
			return err
		}
		if a.output == "json" {
			return a.emit(resp, nil, nil)
		}
		_, _ = a.stdout.Write(resp.GetStdout())
		_, _ = a.stderr.Write(resp.GetStderr())
		if resp.GetExitCode() != 0 {
			return exitCodeError{int(resp.GetExitCode())}
		}
		return nil
	}
}

func podsStop(fs *flag.FlagSet) func(context.Context, *app, []string) error {
	timeout := fs.Int64("stop-timeout", 10, "seconds between the stop signal and SIGKILL")
	signal := fs.String("signal", "", "stop signal by name, e.g. SIGQUIT (default SIGTERM)")
	return func(ctx context.Context, a *app, args []string) error {
		resp, err := a.client.Pods.Stop(ctx, &podsv0.StopRequest{ContainerId: args[0], TimeoutSeconds: *timeout, Signal: *signal})
		if err != nil {
			return err
		}
		return a.emit(resp, []string{"STOPPED"}, func() [][]string { return [][]string{{args[0]}} })
	}
}

func podsRemove(*flag.FlagSet) func(context.Context, *app, []string) error {
	return func(ctx context.Context, a *app, args []string) error {
		resp, err := a.client.Pods.RemoveContainer(ctx, &podsv0.RemoveContainerRequest{ContainerId: args[0]})
		if err != nil {
			return err
		}
		return a.emit(resp, []string{"REMOVED"}, func() [][]string { return [][]string{{args[0]}} })
	}
}

func podsFree(*flag.FlagSet) func(context.Context, *app, []string) error {
	return func(ctx context.Context, a *app, args []string) error {
		resp, err := a.client.Pods.Free(ctx, &podsv0.FreeRequest{PodId: args[0]})
		if err != nil {
			return err
		}
		return a.emit(resp, []string{"FREED"}, func() [][]string { return [][]string{{args[0]}} })
	}
}
