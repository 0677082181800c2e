package cgroup

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	systemd "github.com/coreos/go-systemd/v22/dbus"
	godbus "github.com/godbus/dbus/v5"
	"golang.org/x/sys/unix"
)

// unitCallTimeout bounds one D-Bus call to systemd and the wait for its job.
const unitCallTimeout = 30 * time.Second

// Units makes and removes transient systemd units over D-Bus (the system
// bus, as runc's systemd driver does). Each call opens its own connection,
// so that a restarted dbus or systemd costs no more than one failed call.
type Units struct{}

func (Units) conn(ctx context.Context) (*systemd.Conn, error) {
	c, err := systemd.NewWithContext(ctx)
	if err != nil {
		return nil, fmt.Errorf("connect to systemd over D-Bus: %w", err)
	}
	return c, nil
}

// runJob runs a job (start or stop) and waits for its result.
func runJob(ctx context.Context, what string, call func(ch chan<- string) (int, error)) error {
	ch := make(chan string, 1)
	if _, err := call(ch); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	select {
	case r := <-ch:
		if r != "done" {
			return fmt.Errorf("%s: systemd job %s", what, r)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%s: %w", what, ctx.Err())
	}
}

func baseProps(desc string) []systemd.Property {
	return []systemd.Property{
		systemd.PropDescription(desc),
		{Name: "DefaultDependencies", Value: godbus.MakeVariant(false)},
		{Name: "MemoryAccounting", Value: godbus.MakeVariant(true)},
		{Name: "CPUAccounting", Value: godbus.MakeVariant(true)},
		{Name: "IOAccounting", Value: godbus.MakeVariant(true)},
		{Name: "TasksAccounting", Value: godbus.MakeVariant(true)},
	}
}

// StartSlice makes the transient slice name (its parent is in its name) and
// returns its cgroup path. A slice that is already there is an error
// wrapping os.ErrExist.
func (u Units) StartSlice(ctx context.Context, name, desc string) (string, error) {
	dir, err := ExpandSlice(name)
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(ctx, unitCallTimeout)
	defer cancel()
	c, err := u.conn(ctx)
	if err != nil {
		return "", err
	}
	defer c.Close()
	err = runJob(ctx, "start slice "+name, func(ch chan<- string) (int, error) {
		return c.StartTransientUnitContext(ctx, name, "fail", baseProps(desc), ch)
	})
	if unitExists(err) {
		return "", fmt.Errorf("slice %s: %w", name, os.ErrExist)
	}
	return dir, err
}

// StartScope makes the transient scope name in slice with process pid in
// it, its cgroup delegated (Delegate=yes: its owner may make sub-cgroups
// and move processes in).
func (u Units) StartScope(ctx context.Context, name, slice string, pid int, desc string) error {
	ctx, cancel := context.WithTimeout(ctx, unitCallTimeout)
	defer cancel()
	c, err := u.conn(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	props := append(baseProps(desc),
		systemd.PropSlice(slice),
		systemd.PropPids(uint32(pid)),
		systemd.Property{Name: "Delegate", Value: godbus.MakeVariant(true)},
	)
	err = runJob(ctx, "start scope "+name, func(ch chan<- string) (int, error) {
		return c.StartTransientUnitContext(ctx, name, "fail", props, ch)
	})
	if unitExists(err) {
		// A scope left failed, or stopping: forget it, then try once more.
		_ = c.ResetFailedUnitContext(ctx, name)
		err = runJob(ctx, "start scope "+name, func(ch chan<- string) (int, error) {
			return c.StartTransientUnitContext(ctx, name, "fail", props, ch)
		})
	}
	return err
}

// StopUnit stops a unit (a slice stops its children, and systemd removes
// their cgroups) and forgets it if it failed; a unit systemd does not know
// is already stopped.
func (u Units) StopUnit(ctx context.Context, name string) error {
	ctx, cancel := context.WithTimeout(ctx, unitCallTimeout)
	defer cancel()
	c, err := u.conn(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	err = runJob(ctx, "stop "+name, func(ch chan<- string) (int, error) {
		return c.StopUnitContext(ctx, name, "replace", ch)
	})
	if noSuchUnit(err) {
		err = nil
	}
	if rerr := c.ResetFailedUnitContext(ctx, name); rerr != nil && !noSuchUnit(rerr) && !notFailed(rerr) {
		err = errors.Join(err, fmt.Errorf("reset %s: %w", name, rerr))
	}
	return err
}

// SetLimits sets the limits of a unit as its properties (what systemd owns
// on cgroup v2: MemoryMax, CPUQuotaPerSecUSec, CPUQuotaPeriodUSec), so that
// a reload of systemd keeps them.
func (u Units) SetLimits(ctx context.Context, name string, l Limits) error {
	props := limitProps(l)
	if len(props) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, unitCallTimeout)
	defer cancel()
	c, err := u.conn(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.SetUnitPropertiesContext(ctx, name, true, props...); err != nil {
		return fmt.Errorf("set the limits of %s: %w", name, err)
	}
	return nil
}

// limitProps are the unit properties of limits.
func limitProps(l Limits) []systemd.Property {
	var props []systemd.Property
	if l.MemoryMax != nil {
		v := uint64(*l.MemoryMax)
		if *l.MemoryMax <= 0 {
			v = ^uint64(0) // infinity
		}
		props = append(props, systemd.Property{Name: "MemoryMax", Value: godbus.MakeVariant(v)})
	}
	if l.CPUMax != nil || l.CPUPeriod != nil {
		period := uint64(100000)
		if l.CPUPeriod != nil && *l.CPUPeriod > 0 {
			period = *l.CPUPeriod
		}
		quota := ^uint64(0) // infinity
		if l.CPUMax != nil && *l.CPUMax > 0 {
			// systemd takes the quota per second, rounded up to 10 ms as
			// runc does (systemd's own granularity).
			quota = uint64(*l.CPUMax) * 1000000 / period
			if quota%10000 != 0 {
				quota = (quota/10000 + 1) * 10000
			}
		}
		props = append(props,
			systemd.Property{Name: "CPUQuotaPerSecUSec", Value: godbus.MakeVariant(quota)},
			systemd.Property{Name: "CPUQuotaPeriodUSec", Value: godbus.MakeVariant(period)})
	}
	if l.CPUWeight != nil {
		props = append(props, systemd.Property{Name: "CPUWeight", Value: godbus.MakeVariant(*l.CPUWeight)})
	}
	return props
}

// JoinScope moves pid into the cgroup of the delegated scope name in slice
// (at dir), making the scope with pid in it when it is not there (systemd
// removes a scope whose last process exited).
// Two callers racing to make the scope both end with pid in it: the one that
// finds it made writes to it.
func (u Units) JoinScope(ctx context.Context, name, slice, dir string, pid int) error {
	procs := filepath.Join(Root, dir, "cgroup.procs")
	var err error
	for try := 0; try < 3; try++ {
		werr := os.WriteFile(procs, []byte(strconv.Itoa(pid)), 0o644)
		if werr == nil {
			return nil
		}
		if !errors.Is(werr, os.ErrNotExist) && !errors.Is(werr, unix.ENODEV) {
			return fmt.Errorf("join scope %s: %w", name, werr)
		}
		if err = u.StartScope(ctx, name, slice, pid, "aurae pod processes"); err == nil || !unitExists(err) {
			return err
		}
	}
	return err
}

func dbusErrName(err error) string {
	var de godbus.Error
	if errors.As(err, &de) {
		return de.Name
	}
	var dp *godbus.Error
	if errors.As(err, &dp) && dp != nil {
		return dp.Name
	}
	return ""
}

func unitExists(err error) bool {
	return err != nil && dbusErrName(err) == "org.freedesktop.systemd1.UnitExists"
}

func noSuchUnit(err error) bool {
	return err != nil && dbusErrName(err) == "org.freedesktop.systemd1.NoSuchUnit"
}

func notFailed(err error) bool {
	return err != nil && dbusErrName(err) == "org.freedesktop.systemd1.UnitNotFailed"
}

// Property reads a unit's property ("ActiveState", "MemoryMax"); a unit
// systemd does not know has ActiveState "inactive", as systemctl shows it.
func (u Units) Property(ctx context.Context, unit, name string) (any, error) {
	ctx, cancel := context.WithTimeout(ctx, unitCallTimeout)
	defer cancel()
	c, err := u.conn(ctx)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	typ := "Unit"
	if name != "ActiveState" && name != "LoadState" && name != "SubState" {
		typ = unitType(unit)
	}
	p, err := c.GetUnitTypePropertyContext(ctx, unit, typ, name)
	if err != nil {
		return nil, fmt.Errorf("property %s of %s: %w", name, unit, err)
	}
	return p.Value.Value(), nil
}

// unitType is the D-Bus interface name of a unit's type ("Slice", "Scope").
func unitType(unit string) string {
	switch {
	case strings.HasSuffix(unit, ".slice"):
		return "Slice"
	case strings.HasSuffix(unit, ".scope"):
		return "Scope"
	case strings.HasSuffix(unit, ".service"):
		return "Service"
	}
	return "Unit"
}
