package main

import (
	"context"
	"flag"
	"fmt"
	"strings"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"

	commonapi "github.com/aurae-runtime/aurae-cri/api/common"
	osapi "github.com/aurae-runtime/aurae-cri/api/os"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/client"
)

var osResource = resource{name: "os", short: "the node service: containers, kernel log, memory, processes, restart, stats (--nodes for several nodes)", commands: []command{
	{use: "containers", short: "the containers the node runs", setup: osContainers},
	{use: "dmesg", short: "the kernel log", setup: osDmesg, follow: true},
	{use: "memory", short: "the node's memory (/proc/meminfo)", setup: osMemory},
	{use: "processes", short: "the node's processes", setup: osProcesses},
	{use: "restart ID", short: "stop a container and start it again with the same spec and log", args: 1, setup: osRestart},
	{use: "stats", short: "memory working set and CPU time of what containers lists (a cell's executable: its cell's)", setup: osStats},
}}

// nodeFlag is --nodes: the call goes to each of them through the auraed
// called (its --peer nodes, or itself).
func nodeFlag(fs *flag.FlagSet) func(context.Context) context.Context {
	nodes := fs.String("nodes", "", "comma-separated nodes to run the call on (this auraed's --node-name and --peer names); default: the auraed called")
	return func(ctx context.Context) context.Context {
		if *nodes == "" {
			return ctx
		}
		return client.WithNodes(ctx, *nodes)
	}
}

// driverFlag is --driver containerd|cri.
func driverFlag(fs *flag.FlagSet) func() (commonapi.ContainerDriver, error) {
	d := fs.String("driver", "containerd", "containerd: what auraed runs; cri: what the node's CRI runtime runs")
	return func() (commonapi.ContainerDriver, error) {
		v, ok := commonapi.ContainerDriver_value[strings.ToUpper(*d)]
		if !ok {
			return 0, usagef("--driver %q: want containerd or cri", *d)
		}
		return commonapi.ContainerDriver(v), nil
	}
}

// nodeErrors prints the errors of the nodes that failed and tells whether
// one did.
func (a *app) nodeErrors(mds ...*commonapi.Metadata) error {
	var failed bool
	for _, md := range mds {
		if md.GetError() != "" {
			printf(a.stderr, "node %s: %s\n", md.GetHostname(), md.GetError())
			failed = true
		}
	}
	if failed {
		return errReported
	}
	return nil
}

// emitNodes prints resp (emit) and then fails, naming them, for the nodes
// whose message carries an error.
func emitNodes[M interface{ GetMetadata() *commonapi.Metadata }](a *app, resp proto.Message, msgs []M, header []string, rows func() [][]string) error {
	if err := a.emit(resp, header, rows); err != nil {
		return err
	}
	mds := make([]*commonapi.Metadata, 0, len(msgs))
	for _, m := range msgs {
		mds = append(mds, m.GetMetadata())
	}
	return a.nodeErrors(mds...)
}

func osContainers(fs *flag.FlagSet) func(context.Context, *app, []string) error {
	withNodes, driver := nodeFlag(fs), driverFlag(fs)
	namespace := fs.String("namespace", "", "only this namespace (a Kubernetes namespace, aurae or cells)")
	return func(ctx context.Context, a *app, _ []string) error {
		d, err := driver()
		if err != nil {
			return err
		}
		resp, err := a.client.OS.Containers(withNodes(ctx), &osapi.ContainersRequest{Namespace: *namespace, Driver: d})
		if err != nil {
			return err
		}
		return emitNodes(a, resp, resp.GetMessages(), []string{"NODE", "NAMESPACE", "ID", "NAME", "IMAGE", "PID", "STATUS", "POD"}, func() [][]string {
			var rows [][]string
			for _, m := range resp.GetMessages() {
				for _, c := range m.GetContainers() {
					rows = append(rows, []string{m.GetMetadata().GetHostname(), c.GetNamespace(), c.GetId(), c.GetName(), orDash(c.GetImage()),
						itoa(c.GetPid()), c.GetStatus(), c.GetPodId()})
				}
			}
			return rows
		})
	}
}

func osDmesg(fs *flag.FlagSet) func(context.Context, *app, []string) error {
	withNodes := nodeFlag(fs)
	follow := fs.Bool("follow", false, "keep printing new records (until ^C)")
	tail := fs.Bool("tail", false, "start at the end of the log")
	return func(ctx context.Context, a *app, _ []string) error {
		st, err := a.client.OS.Dmesg(withNodes(ctx), &osapi.DmesgRequest{Follow: *follow, Tail: *tail})
		if err != nil {
			return err
		}
		var failed []*commonapi.Metadata
		prefix := fs.Lookup("nodes").Value.String() != ""
		err = recvAll(ctx, st.Recv, func(d *commonapi.Data) error {
			if d.GetMetadata().GetError() != "" {
				failed = append(failed, d.GetMetadata())
				return nil
			}
			text := string(d.GetBytes())
			if prefix {
				text = d.GetMetadata().GetHostname() + ": " + text
			}
			return a.emitLine(d, text)
		})
		if err != nil {
			return err
		}
		return a.nodeErrors(failed...)
	}
}

const mib = 1 << 20

func osMemory(fs *flag.FlagSet) func(context.Context, *app, []string) error {
	withNodes := nodeFlag(fs)
	return func(ctx context.Context, a *app, _ []string) error {
		resp, err := a.client.OS.Memory(withNodes(ctx), &emptypb.Empty{})
		if err != nil {
			return err
		}
		return emitNodes(a, resp, resp.GetMessages(), []string{"NODE", "TOTAL (MiB)", "FREE", "AVAILABLE", "BUFFERS", "CACHED", "SWAP TOTAL", "SWAP FREE"}, func() [][]string {
			var rows [][]string
			for _, m := range resp.GetMessages() {
				if m.GetMetadata().GetError() != "" {
					continue
				}
				mi := m.GetMeminfo()
				rows = append(rows, []string{m.GetMetadata().GetHostname(), itoa(mi.GetMemtotal() / mib), itoa(mi.GetMemfree() / mib), itoa(mi.GetMemavailable() / mib),
					itoa(mi.GetBuffers() / mib), itoa(mi.GetCached() / mib), itoa(mi.GetSwaptotal() / mib), itoa(mi.GetSwapfree() / mib)})
			}
			return rows
		})
	}
}

func osProcesses(fs *flag.FlagSet) func(context.Context, *app, []string) error {
	withNodes := nodeFlag(fs)
	return func(ctx context.Context, a *app, _ []string) error {
		resp, err := a.client.OS.Processes(withNodes(ctx), &emptypb.Empty{})
		if err != nil {
			return err
		}
		return emitNodes(a, resp, resp.GetMessages(), []string{"NODE", "PID", "PPID", "STATE", "THREADS", "CPU (s)", "VIRT (MiB)", "RES (MiB)", "COMMAND"}, func() [][]string {
			var rows [][]string
			for _, m := range resp.GetMessages() {
				for _, p := range m.GetProcesses() {
					cmd := p.GetArgs()
					if cmd == "" {
						cmd = "[" + p.GetCommand() + "]" // a kernel thread, as ps shows it
					}
					rows = append(rows, []string{m.GetMetadata().GetHostname(), itoa(p.GetPid()), itoa(p.GetPpid()), p.GetState(), itoa(p.GetThreads()),
						fmt.Sprintf("%.2f", p.GetCpuTime()), itoa(p.GetVirtualMemory() / mib), itoa(p.GetResidentMemory() / mib), cmd})
				}
			}
			return rows
		})
	}
}

func osRestart(fs *flag.FlagSet) func(context.Context, *app, []string) error {
	withNodes, driver := nodeFlag(fs), driverFlag(fs)
	namespace := fs.String("namespace", "", "the container's namespace (checked when given)")
	return func(ctx context.Context, a *app, args []string) error {
		d, err := driver()
		if err != nil {
			return err
		}
		resp, err := a.client.OS.Restart(withNodes(ctx), &osapi.RestartRequest{Namespace: *namespace, Id: args[0], Driver: d})
		if err != nil {
			return err
		}
		return emitNodes(a, resp, resp.GetMessages(), []string{"NODE", "RESTARTED"}, func() [][]string {
			var rows [][]string
			for _, m := range resp.GetMessages() {
				if m.GetMetadata().GetError() == "" {
					rows = append(rows, []string{m.GetMetadata().GetHostname(), args[0]})
				}
			}
			return rows
		})
	}
}

func osStats(fs *flag.FlagSet) func(context.Context, *app, []string) error {
	withNodes, driver := nodeFlag(fs), driverFlag(fs)
	namespace := fs.String("namespace", "", "only this namespace (a Kubernetes namespace, aurae or cells)")
	return func(ctx context.Context, a *app, _ []string) error {
		d, err := driver()
		if err != nil {
			return err
		}
		resp, err := a.client.OS.Stats(withNodes(ctx), &osapi.StatsRequest{Namespace: *namespace, Driver: d})
		if err != nil {
			return err
		}
		return emitNodes(a, resp, resp.GetMessages(), []string{"NODE", "NAMESPACE", "ID", "NAME", "POD", "MEMORY (bytes)", "CPU (ns)"}, func() [][]string {
			var rows [][]string
			for _, m := range resp.GetMessages() {
				for _, s := range m.GetStats() {
					rows = append(rows, []string{m.GetMetadata().GetHostname(), s.GetNamespace(), s.GetId(), s.GetName(), s.GetPodId(),
						itoa(s.GetMemoryUsage()), itoa(s.GetCpuUsage())})
				}
			}
			return rows
		})
	}
}
