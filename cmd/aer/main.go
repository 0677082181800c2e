// Command aer is the command-line client of auraed: `aer RESOURCE VERB
// [ARGS] [FLAGS]` for cells, pods, vms, discovery, observe, os (the node
// service) and schedule, in the manner of kubectl and crictl. Tables by
// default, `-o json` for the messages themselves. Exit status: 0 done, 1 the call
// (or, for a call to several nodes, one node) failed, 2 bad usage.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/aurae-runtime/aurae-cri/pkg/aurae/client"
)

const (
	exitOK    = 0
	exitFail  = 1
	exitUsage = 2
)

// usageError is a mistake in the command line (exit status 2).
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return usageError{fmt.Sprintf(format, args...)} }

// exitCodeError ends aer with a status of its own (a command's that
// aer pods exec ran), as crictl exec does.
type exitCodeError struct{ code int }

func (e exitCodeError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// errReported: the command printed what failed (a node's error).
var errReported = errors.New("failed")

// globals are the flags every command takes.
type globals struct {
	address string
	config  string
	output  string
	timeout time.Duration
}

func (g *globals) register(fs *flag.FlagSet) {
	fs.StringVar(&g.address, "address", "", "auraed to call: unix:///path or tcp://host:port (default: the config's [system] socket, else unix:///run/aurae/aurae.sock)")
	fs.StringVar(&g.config, "config", "", "client config (default: ~/.aurae/config, else /etc/aurae/config, when they exist)")
	fs.StringVar(&g.output, "o", "table", "output format: table or json")
	fs.DurationVar(&g.timeout, "timeout", 30*time.Second, "bound of a call that does not follow a stream")
}

// app is one run of aer.
type app struct {
	globals
	stdout, stderr io.Writer
	client         *client.Client
}

// command is a verb of a resource.
type command struct {
	// use is the verb and its arguments, "start CELL NAME COMMAND"; an
	// empty verb is the resource's only command ("aer discovery").
	use   string
	short string
	// args: how many positional arguments it takes; -n: at least n.
	args int
	// setup registers the command's flags and returns what runs it.
	setup func(fs *flag.FlagSet) func(ctx context.Context, a *app, args []string) error
	// follow: a stream that runs until ^C (no --timeout).
	follow bool
}

type resource struct {
	name, short string
	commands    []command
}

var resources = []resource{cellsResource, podsResource, vmsResource, discoveryResource, observeResource, osResource, scheduleResource, runtimeResource}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run runs aer with args and returns its exit status.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	a := &app{stdout: stdout, stderr: stderr}
	top := flag.NewFlagSet("aer", flag.ContinueOnError)
	top.SetOutput(stderr)
	a.register(top)
	top.Usage = func() {}
	if err := top.Parse(args); err != nil {
		return helpOrUsage(err, stdout, stderr, "aer", func(w io.Writer) { topUsage(w, top) })
	}
	args = top.Args()
	if len(args) == 0 {
		topUsage(stderr, top)
		return exitUsage
	}
	res, ok := findResource(args[0])
	if !ok {
		printf(stderr, "aer: unknown resource %q (see aer --help)\n", args[0])
		return exitUsage
	}
	cmd, rest, err := findCommand(res, args[1:])
	if err != nil {
		printf(stderr, "aer %s: %v\n", res.name, err)
		return exitUsage
	}
	if cmd == nil {
		if len(args) == 1 { // no verb
			resourceUsage(stderr, res)
			return exitUsage
		}
		resourceUsage(stdout, res)
		return exitOK
	}
	name := strings.TrimSpace("aer " + res.name + " " + verb(cmd))
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	runCmd := cmd.setup(fs)
	// Global flags after the verb too, as kubectl takes them; those given
	// before it stay.
	given := map[string]string{}
	top.Visit(func(f *flag.Flag) { given[f.Name] = f.Value.String() })
	a.register(fs)
	for name, v := range given {
		_ = fs.Set(name, v)
	}
	fs.Usage = func() {}
	pos, err := parseInterleaved(fs, rest)
	if err != nil {
		return helpOrUsage(err, stdout, stderr, name, func(w io.Writer) { commandUsage(w, name, cmd, fs) })
	}
	if (cmd.args >= 0 && len(pos) != cmd.args) || len(pos) < -cmd.args {
		printf(stderr, "%s: want arguments %s, got %d\n", name, strings.TrimSpace(strings.TrimPrefix(cmd.use, verb(cmd))), len(pos))
		return exitUsage
	}
	if a.output != "table" && a.output != "json" {
		printf(stderr, "%s: -o %q: want table or json\n", name, a.output)
		return exitUsage
	}
	err = a.connectAndRun(ctx, cmd, runCmd, pos)
	var ue usageError
	var ec exitCodeError
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &ec):
		return ec.code
	case errors.As(err, &ue):
		printf(stderr, "%s: %v\n", name, err)
		return exitUsage
	case errors.Is(err, errReported):
		return exitFail
	default:
		printf(stderr, "%s: %v\n", name, err)
		return exitFail
	}
}

func (a *app) connectAndRun(ctx context.Context, cmd *command, runCmd func(context.Context, *app, []string) error, args []string) error {
	address, opts, err := a.dialTarget()
	if err != nil {
		return err
	}
	dctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	c, err := client.Dial(dctx, address, opts...)
	if err != nil {
		return err
	}
	defer func() { _ = c.Close() }()
	a.client = c
	if !cmd.follow {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, a.timeout)
		defer cancel()
	}
	return runCmd(ctx, a, args)
}

// parseInterleaved parses flags that may come before, between and after
// the positional arguments; "--" ends the flags.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		consumed := len(args) - fs.NArg()
		if consumed > 0 && args[consumed-1] == "--" {
			return append(pos, fs.Args()...), nil
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos, args = append(pos, args[0]), args[1:]
	}
}

// printf writes to the terminal; a failed write has nowhere to be told.
func printf(w io.Writer, format string, args ...any) { _, _ = fmt.Fprintf(w, format, args...) }

func printLine(w io.Writer, args ...any) { _, _ = fmt.Fprintln(w, args...) }

// helpOrUsage answers a flag parsing error: the usage on stdout for
// --help, else (the flag package printed the mistake) a hint on stderr.
func helpOrUsage(err error, stdout, stderr io.Writer, name string, usage func(io.Writer)) int {
	if errors.Is(err, flag.ErrHelp) {
		usage(stdout)
		return exitOK
	}
	printf(stderr, "see %s --help\n", name)
	return exitUsage
}

func findResource(name string) (*resource, bool) {
	for i := range resources {
		if resources[i].name == name {
			return &resources[i], true
		}
	}
	return nil, false
}

// findCommand picks the resource's verb from args; nil (and no error) for
// a bare `aer RESOURCE` or `aer RESOURCE --help` of a resource with verbs.
func findCommand(res *resource, args []string) (*command, []string, error) {
	if len(res.commands) == 1 && verb(&res.commands[0]) == "" {
		return &res.commands[0], args, nil
	}
	if len(args) == 0 || args[0] == "--help" || args[0] == "-h" || args[0] == "help" {
		return nil, nil, nil
	}
	for i := range res.commands {
		if verb(&res.commands[i]) == args[0] {
			return &res.commands[i], args[1:], nil
		}
	}
	return nil, nil, fmt.Errorf("unknown verb %q (see aer %s --help)", args[0], res.name)
}

func verb(c *command) string {
	v, _, _ := strings.Cut(c.use, " ")
	if v == strings.ToUpper(v) {
		return "" // the use starts with an argument
	}
	return v
}

func topUsage(w io.Writer, fs *flag.FlagSet) {
	printLine(w, "Usage: aer [FLAGS] RESOURCE VERB [ARGS] [FLAGS]")
	printLine(w, "\nThe command-line client of auraed. Resources:")
	for _, r := range resources {
		printf(w, "  %-10s %s\n", r.name, r.short)
	}
	printLine(w, "\n`aer RESOURCE --help` lists its verbs, `aer RESOURCE VERB --help` their flags.")
	printLine(w, "Exit status: 0 done, 1 the call (or one node of it) failed, 2 bad usage.")
	printLine(w, "\nFlags:")
	fs.SetOutput(w)
	fs.PrintDefaults()
}

func resourceUsage(w io.Writer, r *resource) {
	printf(w, "Usage: aer %s VERB [ARGS] [FLAGS]\n\n%s\n\nVerbs:\n", r.name, r.short)
	cmds := append([]command(nil), r.commands...)
	sort.Slice(cmds, func(i, j int) bool { return cmds[i].use < cmds[j].use })
	for _, c := range cmds {
		printf(w, "  %-32s %s\n", c.use, c.short)
	}
}

func commandUsage(w io.Writer, name string, c *command, fs *flag.FlagSet) {
	use := strings.Join(strings.Fields(name+" "+strings.TrimPrefix(c.use, verb(c))+" [FLAGS]"), " ")
	printf(w, "Usage: %s\n\n%s\n\nFlags:\n", use, c.short)
	fs.SetOutput(w)
	fs.PrintDefaults()
}
