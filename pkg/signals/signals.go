// Package signals names POSIX signals the way runc, the image config and
// the CRI spell them, for a container's stop signal.
package signals

import (
	"fmt"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Real-time signals as Linux numbers them for user space (glibc's
// SIGRTMIN is 34: it keeps 32 and 33 for itself).
const (
	rtMin = 34
	rtMax = 64
)

// aliases are names Linux gives a signal besides unix's own.
var aliases = map[string]string{"SIGCLD": "SIGCHLD", "SIGIOT": "SIGABRT", "SIGPOLL": "SIGIO"}

// Parse reads a signal as an image config's StopSignal may write it: a
// name with or without "SIG" in any case ("SIGQUIT", "quit"), an alias
// ("SIGCLD"), a real-time signal ("SIGRTMIN+3", "SIGRTMAX-1") or a
// number.
func Parse(s string) (syscall.Signal, error) {
	if n, err := strconv.Atoi(s); err == nil {
		if n < 1 || n > rtMax {
			return 0, fmt.Errorf("signal %d out of range", n)
		}
		return syscall.Signal(n), nil
	}
	name := strings.ToUpper(strings.TrimSpace(s))
	if !strings.HasPrefix(name, "SIG") {
		name = "SIG" + name
	}
	if a, ok := aliases[name]; ok {
		name = a
	}
	if sig := unix.SignalNum(name); sig != 0 {
		return sig, nil
	}
	rt := func(base int, rest string, sign int) (syscall.Signal, error) {
		off := 0
		if rest != "" {
			n, err := strconv.Atoi(rest)
			if err != nil || n < 0 {
				return 0, fmt.Errorf("unknown signal %q", s)
			}
			off = n
		}
		v := base + sign*off
		if v < rtMin || v > rtMax {
			return 0, fmt.Errorf("signal %q out of range", s)
		}
		return syscall.Signal(v), nil
	}
	switch {
	case name == "SIGRTMIN":
		return rt(rtMin, "", 1)
	case strings.HasPrefix(name, "SIGRTMIN+"):
		return rt(rtMin, strings.TrimPrefix(name, "SIGRTMIN+"), 1)
	case name == "SIGRTMAX":
		return rt(rtMax, "", -1)
	case strings.HasPrefix(name, "SIGRTMAX-"):
		return rt(rtMax, strings.TrimPrefix(name, "SIGRTMAX-"), -1)
	}
	return 0, fmt.Errorf("unknown signal %q", s)
}

// Name is the canonical name of sig: "SIGQUIT", "SIGRTMIN+3".
func Name(sig syscall.Signal) string {
	if n := unix.SignalName(sig); n != "" {
		return n
	}
	if sig >= rtMin && sig <= rtMax {
		if sig == rtMin {
			return "SIGRTMIN"
		}
		return "SIGRTMIN+" + strconv.Itoa(int(sig)-rtMin)
	}
	return strconv.Itoa(int(sig))
}

// Canonical is Name(Parse(s)).
func Canonical(s string) (string, error) {
	sig, err := Parse(s)
	if err != nil {
		return "", err
	}
	return Name(sig), nil
}
