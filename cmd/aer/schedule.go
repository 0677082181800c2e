package main

import (
	"context"
	"flag"

	metaapi "github.com/aurae-runtime/aurae-cri/api/meta"
	runtimeapi "github.com/aurae-runtime/aurae-cri/api/runtime"
	scheduleapi "github.com/aurae-runtime/aurae-cri/api/schedule"
)

var scheduleResource = resource{name: "schedule", short: "executables auraed keeps running, across its restarts and reboots", commands: []command{
	{use: "list", short: "the scheduled executables, enabled and disabled", setup: scheduleList},
	{use: "enable NAME COMMAND", short: "keep COMMAND (one argument) running as NAME; a known NAME gets the new command", args: 2, setup: scheduleEnable},
	{use: "disable NAME", short: "stop NAME and keep it, not run", args: 1, setup: scheduleChange(false)},
	{use: "destroy NAME", short: "stop NAME and forget it", args: 1, setup: scheduleChange(true)},
}}

func scheduleList(*flag.FlagSet) func(context.Context, *app, []string) error {
	return func(ctx context.Context, a *app, _ []string) error {
		c := scheduleapi.NewScheduleClient(a.client.Conn)
		en, err := c.ShowEnabled(ctx, &scheduleapi.ShowEnabledRequest{})
		if err != nil {
			return err
		}
		dis, err := c.ShowDisabled(ctx, &scheduleapi.ShowDisabledRequest{})
		if err != nil {
			return err
		}
		if a.output == "json" {
			if err := a.emit(en, nil, nil); err != nil {
				return err
			}
			return a.emit(dis, nil, nil)
		}
		var rows [][]string
		for _, e := range en.GetExecutables() {
			rows = append(rows, []string{e.GetMeta().GetName(), "enabled", e.GetCommand()})
		}
		for _, e := range dis.GetExecutables() {
			rows = append(rows, []string{e.GetMeta().GetName(), "disabled", e.GetCommand()})
		}
		return a.table([]string{"NAME", "STATE", "COMMAND"}, rows)
	}
}

func scheduleEnable(fs *flag.FlagSet) func(context.Context, *app, []string) error {
	comment := fs.String("comment", "", "what the executable is for")
	return func(ctx context.Context, a *app, args []string) error {
		resp, err := scheduleapi.NewScheduleExecutableClient(a.client.Conn).Enable(ctx,
			&runtimeapi.Executable{Meta: &metaapi.AuraeMeta{Name: args[0]}, Command: args[1], Comment: *comment})
		if err != nil {
			return err
		}
		return a.emit(resp, []string{"ENABLED"}, func() [][]string { return [][]string{{args[0]}} })
	}
}

func scheduleChange(destroy bool) func(*flag.FlagSet) func(context.Context, *app, []string) error {
	return func(*flag.FlagSet) func(context.Context, *app, []string) error {
		return func(ctx context.Context, a *app, args []string) error {
			c := scheduleapi.NewScheduleExecutableClient(a.client.Conn)
			e := &runtimeapi.Executable{Meta: &metaapi.AuraeMeta{Name: args[0]}}
			if destroy {
				resp, err := c.Destroy(ctx, e)
				if err != nil {
					return err
				}
				return a.emit(resp, []string{"DESTROYED"}, func() [][]string { return [][]string{{args[0]}} })
			}
			resp, err := c.Disable(ctx, e)
			if err != nil {
				return err
			}
			return a.emit(resp, []string{"DISABLED"}, func() [][]string { return [][]string{{args[0]}} })
		}
	}
}
