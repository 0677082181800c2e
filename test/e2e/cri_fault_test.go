package e2e

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/pkg/cri"
	"github.com/aurae-runtime/aurae-cri/test/testimage"
)

const (
	// faultSeedEnv overrides the seed of TestCRIFaultInjection (printed at
	// its start) to replay a run: the same plans of kills, though the
	// timing of the calls they cut is the machine's.
	faultSeedEnv = "AURAE_CRI_FAULT_SEED"
	// faultKillsEnv overrides how many kills of aurae-cri
	// TestCRIFaultInjection makes (at least 50 by default).
	faultKillsEnv = "AURAE_CRI_FAULT_KILLS"
)

// lifeStep is a step of a pod's life in TestCRIFaultInjection.
type lifeStep int

const (
	stepRunPod      lifeStep = iota
	stepCreateLong           // a container that runs until stopped (exit 42 on SIGTERM)
	stepStartLong            //
	stepCreateShort          // a container that exits at once with a code of its own
	stepStartShort           //
	stepExec                 // ExecSync in the long one
	stepWaitShort            // the short one's exit is seen, with its code
	stepStopLong             // StopContainer of the long one (skipped in some lives)
	stepRemoveShort          //
	stepStopPod              //
	stepRemovePod            //
	stepsOfLife
)

var stepNames = [...]string{"RunPodSandbox", "CreateContainer(long)", "StartContainer(long)", "CreateContainer(short)",
	"StartContainer(short)", "ExecSync(long)", "wait(short)", "StopContainer(long)", "RemoveContainer(short)",
	"StopPodSandbox", "RemovePodSandbox"}

func (s lifeStep) String() string { return stepNames[s] }

// lane is one pod at a time living its life, step by step: every step
// before next was confirmed to the client.
type lane struct {
	rng    *rand.Rand
	n, gen int
	next   lifeStep
	// failed is the error of the step next when the last round cut it.
	failed error
	pod    *runtimeapi.PodSandboxConfig
	podID  string
	long   string
	short  string
	// shortExit is the short container's exit code; stopLong tells whether
	// the life stops the long container itself (exit 42) or leaves that to
	// StopPodSandbox (SIGKILL: 137).
	shortExit int32
	stopLong  bool
	// restarts counts containers made again after a start the crash cut
	// had failed (their attempt numbers).
	restarts uint32
}

// newLife starts the lane's next pod.
func (l *lane) newLife(c *CRI) {
	rng := l.rng
	l.gen++
	name := fmt.Sprintf("fi-%d-%d", l.n, l.gen)
	l.pod = &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: name, Namespace: "e2e-faults", Uid: fmt.Sprintf("uid-%d-%d", l.n, l.gen)},
		Hostname:     name,
		LogDirectory: c.LogDir + "/" + name,
		Linux:        &runtimeapi.LinuxPodSandboxConfig{},
	}
	if rng.IntN(2) == 0 { // portmap's rules too
		l.pod.PortMappings = []*runtimeapi.PortMapping{{ContainerPort: 80, HostPort: int32(20000 + rng.IntN(20000))}}
	}
	l.next, l.failed, l.podID, l.long, l.short, l.restarts = stepRunPod, nil, "", "", "", 0
	l.shortExit = int32(rng.IntN(100))
	l.stopLong = rng.IntN(3) != 0
}

// step runs the lane's step next; it advances on success. retry is the
// kubelet's retry of a step a crash cut short: a start is not repeated
// when the container is past CREATED.
func (l *lane) step(ctx context.Context, c *CRI, image string, retry bool) error {
	rt := c.Runtime
	var err error
	switch l.next {
	case stepRunPod:
		l.podID, err = rt.RunPodSandbox(ctx, l.pod, "")
	case stepCreateLong:
		cfg := containerConfig("long", image, "sh", "-c", `trap "exit 42" TERM; while :; do sleep 0.1; done`)
		cfg.Metadata.Attempt = l.restarts
		// Its image as an image volume too: shared by the lanes' long
		// containers, released with the last of them.
		cfg.Mounts = []*runtimeapi.Mount{{ContainerPath: "/iv", Readonly: true, ImageSubPath: "bin", Image: &runtimeapi.ImageSpec{Image: image}}}
		l.long, err = rt.CreateContainer(ctx, l.podID, cfg, l.pod)
	case stepStartLong, stepStartShort:
		id := l.long
		if l.next == stepStartShort {
			id = l.short
		}
		if !retry {
			err = rt.StartContainer(ctx, id)
			break
		}
		var st *runtimeapi.ContainerStatusResponse
		if st, err = rt.ContainerStatus(ctx, id, false); err != nil {
			break
		}
		switch st := st.GetStatus(); {
		case st.GetState() == runtimeapi.ContainerState_CONTAINER_CREATED:
			err = rt.StartContainer(ctx, id)
		case st.GetState() == runtimeapi.ContainerState_CONTAINER_RUNNING,
			l.next == stepStartShort && st.GetExitCode() == l.shortExit && st.GetStartedAt() != 0:
			// It started (and the short one may have exited).
		default:
			// The start the crash cut failed (the long one never exits by
			// itself, the short one not with that code): as the kubelet
			// does, remove it and make the next attempt.
			if st.GetState() != runtimeapi.ContainerState_CONTAINER_EXITED || st.GetExitCode() == 0 {
				return fmt.Errorf("container %s after a start cut short: %v", id, st)
			}
			if err = rt.RemoveContainer(ctx, id); err != nil {
				return err
			}
			l.restarts++
			l.next--
			return nil
		}
	case stepCreateShort:
		cfg := containerConfig("short", image, "sh", "-c", "exit "+strconv.Itoa(int(l.shortExit)))
		cfg.Metadata.Attempt = l.restarts
		l.short, err = rt.CreateContainer(ctx, l.podID, cfg, l.pod)
	case stepExec:
		var out []byte
		token := fmt.Sprintf("exec-%d-%d", l.n, l.gen)
		if out, _, err = rt.ExecSync(ctx, l.long, []string{"echo", token}, 20*time.Second); err == nil && string(out) != token+"\n" {
			return fmt.Errorf("exec in %s: output %q, want %q", l.long, out, token+"\n")
		}
	case stepWaitShort:
		deadline := time.Now().Add(30 * time.Second)
		for {
			var st *runtimeapi.ContainerStatusResponse
			if st, err = rt.ContainerStatus(ctx, l.short, false); err != nil || st.GetStatus().GetState() == runtimeapi.ContainerState_CONTAINER_EXITED {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("container %s never exited: %v", l.short, st.GetStatus())
			}
			time.Sleep(50 * time.Millisecond)
		}
	case stepStopLong:
		if l.stopLong {
			err = rt.StopContainer(ctx, l.long, 10)
		}
	case stepRemoveShort:
		err = rt.RemoveContainer(ctx, l.short)
	case stepStopPod:
		err = rt.StopPodSandbox(ctx, l.podID)
	case stepRemovePod:
		err = rt.RemovePodSandbox(ctx, l.podID)
	}
	if err != nil {
		return err
	}
	l.next++
	return nil
}

// want is what the CRI must list of the lane's pod: its state, and its
// containers' states (several are allowed between a start and the exit
// seen) with the exit code of exited ones.
func (l *lane) want(pods map[string]runtimeapi.PodSandboxState, ctrs map[string]wantContainer) {
	if l.next <= stepRunPod || l.next > stepRemovePod {
		return
	}
	pods[l.podID] = runtimeapi.PodSandboxState_SANDBOX_READY
	if l.next > stepStopPod {
		pods[l.podID] = runtimeapi.PodSandboxState_SANDBOX_NOTREADY
	}
	if l.next > stepCreateLong {
		w := wantContainer{states: []runtimeapi.ContainerState{runtimeapi.ContainerState_CONTAINER_CREATED}}
		switch {
		case l.next > stepStopLong && l.stopLong:
			w = wantContainer{states: []runtimeapi.ContainerState{runtimeapi.ContainerState_CONTAINER_EXITED}, exit: 42}
		case l.next > stepStopPod:
			w = wantContainer{states: []runtimeapi.ContainerState{runtimeapi.ContainerState_CONTAINER_EXITED}, exit: 137}
		case l.next > stepStartLong:
			w.states = []runtimeapi.ContainerState{runtimeapi.ContainerState_CONTAINER_RUNNING}
		}
		w.what = fmt.Sprintf("long of %s", l.pod.GetMetadata().GetName())
		ctrs[l.long] = w
	}
	if l.next > stepCreateShort && l.next <= stepRemoveShort {
		w := wantContainer{states: []runtimeapi.ContainerState{runtimeapi.ContainerState_CONTAINER_CREATED}}
		switch {
		case l.next > stepWaitShort:
			w = wantContainer{states: []runtimeapi.ContainerState{runtimeapi.ContainerState_CONTAINER_EXITED}, exit: l.shortExit}
		case l.next > stepStartShort:
			w = wantContainer{states: []runtimeapi.ContainerState{runtimeapi.ContainerState_CONTAINER_RUNNING, runtimeapi.ContainerState_CONTAINER_EXITED}, exit: l.shortExit}
		}
		w.what = fmt.Sprintf("short of %s", l.pod.GetMetadata().GetName())
		ctrs[l.short] = w
	}
}

type wantContainer struct {
	what   string
	states []runtimeapi.ContainerState
	exit   int32 // when exited
}

// faultKillLog is what cmd/aurae-cri logs at a fault point, before its
// SIGKILL.
const faultKillLog = `"msg":"fault injection: SIGKILL"`

// faultPlan is how a round kills: at a fault point of pkg/cri, or after
// a delay (whichever comes first), and which daemon.
type faultPlan struct {
	point string
	delay time.Duration
	// auraed kills the auraed apart instead of aurae-cri; both kills both.
	auraed, both bool
	// steps is how many steps each lane takes.
	steps []int
}

func (p faultPlan) String() string {
	target := "aurae-cri"
	switch {
	case p.both:
		target = "aurae-cri and auraed"
	case p.auraed:
		target = "auraed"
	}
	if p.point != "" {
		return fmt.Sprintf("%s at %s or after %v", target, p.point, p.delay)
	}
	return fmt.Sprintf("%s after %v", target, p.delay)
}

// faultRun is one TestCRIFaultInjection run against one aurae-cri.
type faultRun struct {
	t     *testing.T
	c     *crashCRI
	apart *Auraed // the auraed aurae-cri uses, when not embedded
	ctrd  *containerd.Client
	image string
	rng   *rand.Rand
	seed  uint64
	lanes []*lane

	// cut counts the calls the kills cut (each retried after the restart).
	rounds, kills, pointKills, cut, leaks int
	pointKillsLogged                      int // aurae-cri's own count
}

func (r *faultRun) fatalf(format string, args ...any) {
	r.t.Helper()
	r.t.Fatalf("seed %d (%s=%d replays the plans), round %d: %s", r.seed, faultSeedEnv, r.seed, r.rounds, fmt.Sprintf(format, args...))
}

// round runs a few steps of every lane while the plan kills, restarts
// what it killed, retries what the crash cut (as the kubelet would), and
// checks the CRI's lists and the machine.
func (r *faultRun) round(plan faultPlan) {
	t, c := r.t, r.c
	r.rounds++
	killCRI := !plan.auraed || plan.both
	if plan.point != "" {
		c.aim(t, plan.point)
	}
	steps := plan.steps
	var killed sync.Once
	kill := func() {
		killed.Do(func() {
			if killCRI {
				c.signal(syscall.SIGKILL)
			}
			if plan.auraed || plan.both {
				r.apart.signal(syscall.SIGKILL)
			}
		})
	}
	timer := time.AfterFunc(plan.delay, kill)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	var wg sync.WaitGroup
	for i, l := range r.lanes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range steps[i] {
				if l.failed = l.step(ctx, c.CRI, r.image, false); l.failed != nil {
					return
				}
				if l.next > stepRemovePod {
					l.newLife(c.CRI)
				}
			}
		}()
	}
	wg.Wait()
	cancel()
	timer.Stop()
	kill() // the round's kill, if nothing did yet
	r.kills++
	c.aim(t, "")
	// Errors other than the lost connection come from the daemons'
	// answers: with only aurae-cri killed, they are bugs.
	for _, l := range r.lanes {
		if l.failed != nil && !plan.auraed && !plan.both && status.Code(l.failed) != codes.Unavailable {
			r.fatalf("lane %d: %s of %s failed, not by the crash (%s): %v", l.n, l.next, l.pod.GetMetadata().GetName(), plan, l.failed)
		}
	}
	if plan.auraed || plan.both {
		r.apart.Restart(t)
	}
	if killCRI {
		c.Restart(t) // which waits for the dead one's last words
		if n := strings.Count(c.Logs(), faultKillLog); n > r.pointKillsLogged {
			r.pointKills, r.pointKillsLogged = r.pointKills+1, n
		}
	}
	for _, l := range r.lanes {
		if l.failed == nil {
			continue
		}
		r.cut++
		// Both daemons answer again: only a lost connection is retried
		// (aurae-cri's to a restarted auraed comes back within seconds),
		// any other error is a bug (a start refused on a container listed
		// as created, a removal stuck).
		var err error
		for try := 0; try < 25; try++ {
			if err = l.step(t.Context(), c.CRI, r.image, true); status.Code(err) != codes.Unavailable {
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
		if err != nil {
			r.fatalf("lane %d: retry of %s of %s (cut by %s: %v): %v", l.n, l.next, l.pod.GetMetadata().GetName(), plan, l.failed, err)
		}
		l.failed = nil
		if l.next > stepRemovePod {
			l.newLife(c.CRI)
		}
	}
	r.check(plan)
}

// check asserts that the CRI lists exactly the lanes' confirmed pods and
// containers, in their states, and that nothing on the machine is left
// that none of them owns.
func (r *faultRun) check(plan faultPlan) {
	t, c := r.t, r.c
	ctx := t.Context()
	wantPods := map[string]runtimeapi.PodSandboxState{}
	wantCtrs := map[string]wantContainer{}
	for _, l := range r.lanes {
		l.want(wantPods, wantCtrs)
	}
	pods, err := c.Runtime.ListPodSandbox(ctx, nil)
	if err != nil {
		r.fatalf("ListPodSandbox: %v", err)
	}
	owned := map[string]bool{}
	ready := 0
	var problems []string
	for _, p := range pods {
		owned[p.GetId()] = true
		want, ok := wantPods[p.GetId()]
		switch {
		case !ok:
			problems = append(problems, fmt.Sprintf("pod %s (%s) listed, never confirmed or removed", p.GetId(), p.GetMetadata().GetName()))
		case p.GetState() != want:
			problems = append(problems, fmt.Sprintf("pod %s (%s) is %s, want %s", p.GetId(), p.GetMetadata().GetName(), p.GetState(), want))
		}
		if p.GetState() == runtimeapi.PodSandboxState_SANDBOX_READY {
			ready++
		}
	}
	for id := range wantPods {
		if !owned[id] {
			problems = append(problems, fmt.Sprintf("pod %s confirmed, not listed", id))
		}
	}
	ctrs, err := c.Runtime.ListContainers(ctx, nil)
	if err != nil {
		r.fatalf("ListContainers: %v", err)
	}
	listed := map[string]bool{}
	for _, ct := range ctrs {
		owned[ct.GetId()], listed[ct.GetId()] = true, true
		// An image volume is owned (keyed by its image's hex) while a
		// listed container mounts it.
		if st, err := c.Runtime.ContainerStatus(ctx, ct.GetId(), false); err == nil {
			for _, m := range st.GetStatus().GetMounts() {
				if ref := m.GetImage().GetImageRef(); ref != "" {
					owned[strings.TrimPrefix(ref, "sha256:")] = true
				}
			}
		}
		want, ok := wantCtrs[ct.GetId()]
		if !ok {
			problems = append(problems, fmt.Sprintf("container %s (%s) listed, never confirmed or removed", ct.GetId(), ct.GetMetadata().GetName()))
			continue
		}
		if !slices.Contains(want.states, ct.GetState()) {
			problems = append(problems, fmt.Sprintf("container %s (%s) is %s, want %v", ct.GetId(), want.what, ct.GetState(), want.states))
			continue
		}
		if ct.GetState() == runtimeapi.ContainerState_CONTAINER_EXITED {
			st, err := c.Runtime.ContainerStatus(ctx, ct.GetId(), false)
			if err != nil {
				r.fatalf("ContainerStatus %s: %v", ct.GetId(), err)
			}
			if code := st.GetStatus().GetExitCode(); code != want.exit {
				problems = append(problems, fmt.Sprintf("container %s (%s) exited with %d (%s: %s), want %d",
					ct.GetId(), want.what, code, st.GetStatus().GetReason(), st.GetStatus().GetMessage(), want.exit))
			}
		}
	}
	for id, w := range wantCtrs {
		if !listed[id] {
			problems = append(problems, fmt.Sprintf("container %s (%s) confirmed, not listed", id, w.what))
		}
	}
	if len(problems) > 0 {
		r.fatalf("after killing %s:\n  %s", plan, strings.Join(problems, "\n  "))
	}
	// Things settle (a CNI DEL, an exec's runc) within moments: a leak is
	// what stays.
	var left []string
	for try := 0; try < 10; try++ {
		left = r.c.footprint(t, r.apart, r.ctrd, owned).unowned(owned, ready)
		if len(left) == 0 {
			return
		}
		time.Sleep(300 * time.Millisecond)
	}
	r.leaks += len(left)
	r.fatalf("after killing %s, left on the machine that no pod or container listed owns:\n  %s", plan, strings.Join(left, "\n  "))
}

// plan draws the next round's plan: the steps of each lane, and a kill at
// one of the fault points those steps will pass (half the rounds), else
// after a random delay into them.
func (r *faultRun) plan() faultPlan {
	p := faultPlan{delay: time.Duration(r.rng.IntN(2500)) * time.Millisecond}
	var points []string
	for _, l := range r.lanes {
		n := 1 + r.rng.IntN(3)
		p.steps = append(p.steps, n)
		for s := l.next; s < l.next+lifeStep(n); s++ {
			points = append(points, stepPoints[s%stepsOfLife]...)
		}
	}
	if len(points) > 0 && r.rng.IntN(2) == 0 {
		p.point = points[r.rng.IntN(len(points))]
		p.delay += 5 * time.Second // the point first
	}
	if r.apart != nil {
		switch r.rng.IntN(3) {
		case 0:
			p.auraed, p.point = true, ""
		case 1:
			p.both = true
		}
	}
	return p
}

// stepPoints are the fault points each step passes.
var stepPoints = map[lifeStep][]string{
	stepRunPod:      {cri.FaultPodCreated, cri.FaultPodNetwork, cri.FaultPodStarted},
	stepCreateLong:  {cri.FaultContainerRootfs, cri.FaultContainerImageVolumes, cri.FaultContainerPrepared},
	stepCreateShort: {cri.FaultContainerRootfs, cri.FaultContainerPrepared},
	stepRemoveShort: {cri.FaultContainerRemoving},
	stepRemovePod:   {cri.FaultContainerRemoving, cri.FaultPodRemoving},
}

// finish removes every lane's pod through the CRI (no kill now; only a
// lost connection is retried: aurae-cri's to an auraed that the last round
// restarted may still be in its reconnect backoff) and checks that nothing
// is left.
func (r *faultRun) finish() {
	t, c := r.t, r.c
	for _, l := range r.lanes {
		if l.podID != "" && l.next > stepRunPod {
			var err error
			for try := 0; try < 25; try++ {
				if err = c.Runtime.RemovePodSandbox(t.Context(), l.podID); status.Code(err) != codes.Unavailable {
					break
				}
				time.Sleep(200 * time.Millisecond)
			}
			if err != nil {
				r.fatalf("final RemovePodSandbox %s: %v", l.podID, err)
			}
		}
		l.next, l.podID = stepRunPod, ""
	}
	r.check(faultPlan{})
}

func faultSeed(t *testing.T) uint64 {
	t.Helper()
	if s := os.Getenv(faultSeedEnv); s != "" {
		seed, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("%s=%q: %v", faultSeedEnv, s, err)
		}
		return seed
	}
	return uint64(time.Now().UnixNano())
}

func faultKills(t *testing.T) int {
	t.Helper()
	n := 50
	if s := os.Getenv(faultKillsEnv); s != "" {
		var err error
		if n, err = strconv.Atoi(s); err != nil || n < 1 {
			t.Fatalf("%s=%q: want a positive count", faultKillsEnv, s)
		}
	}
	return n
}

// TestCRIFaultInjection runs pod lives (run, create, start, exec, wait
// for an exit, stop, remove) in three lanes at once and kills aurae-cri
// with SIGKILL, round after round, at a randomized point: one of
// pkg/cri's fault points (right after a side effect, before its record)
// or a random delay into the round's calls. It restarts it, retries what
// the crash cut as the kubelet would, and then checks that the CRI lists
// exactly the pods and containers confirmed (and not removed), in their
// states, with the exit codes of the exited ones, and that nothing on the
// machine (mounts, dirs, host-local addresses, iptables rules, cgroups,
// processes, veths, auraed's pods, snapshots, leases) is left that none
// of them owns. Most kills are of aurae-cri with its embedded auraed; the
// last part runs auraed apart (--aurae-address) and kills either or both.
// The seed is printed; AURAE_CRI_FAULT_SEED replays the plans and
// AURAE_CRI_FAULT_KILLS sets the number of kills (50 by default).
func TestCRIFaultInjection(t *testing.T) {
	requireRoot(t)
	for _, point := range cri.FaultPoints {
		if !slices.ContainsFunc(slices.Collect(maps.Values(stepPoints)), func(ps []string) bool { return slices.Contains(ps, point) }) {
			t.Fatalf("fault point %q: no step of a pod's life passes it (stepPoints)", point)
		}
	}
	seed := faultSeed(t)
	kills := faultKills(t)
	t.Logf("seed %d (%s=%d to replay), %d kills", seed, faultSeedEnv, seed, kills)
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	apartKills := kills / 5
	total := &faultRun{}
	for _, mode := range []struct {
		name  string
		kills int
	}{{"embedded", kills - apartKills}, {"apart", apartKills}} {
		if mode.kills == 0 {
			continue
		}
		t.Run(mode.name, func(t *testing.T) {
			r := &faultRun{t: t, rng: rng, seed: seed}
			var args []string
			if mode.name == "apart" {
				r.apart = startAuraed(t)
				args = []string{"--aurae-address", "unix://" + r.apart.Socket}
			}
			r.c = startCrashCRI(t, args...)
			r.image = r.c.pushBusybox(t, "e2e/busybox:1", testimage.Options{})
			r.ctrd = r.c.containerd(t)
			t.Cleanup(func() { _ = r.ctrd.Close() })
			for n := range 3 {
				// Its own source: lanes run at once.
				l := &lane{n: n, rng: rand.New(rand.NewPCG(rng.Uint64(), rng.Uint64()))}
				l.newLife(r.c.CRI)
				r.lanes = append(r.lanes, l)
			}
			start := time.Now()
			for r.kills < mode.kills {
				plan := r.plan()
				t.Logf("round %d: kill %s", r.rounds+1, plan)
				r.round(plan)
			}
			r.finish()
			t.Logf("%s: %d rounds, %d kills (%d at a fault point), %d calls cut, %d leaks, %v",
				mode.name, r.rounds, r.kills, r.pointKills, r.cut, r.leaks, time.Since(start).Round(time.Second))
			total.rounds += r.rounds
			total.kills += r.kills
			total.pointKills += r.pointKills
			total.cut += r.cut
		})
	}
	if !t.Failed() {
		t.Logf("seed %d: %d rounds, %d kills (%d at a fault point), %d calls cut, 0 leaks", seed, total.rounds, total.kills, total.pointKills, total.cut)
	}
}
