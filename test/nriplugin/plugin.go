// Package nriplugin is an NRI plugin for tests, built on NRI's stub: it
// records the events it sees, injects environment variables and mounts
// (and whatever else a test sets) at CreateContainer, and can hang in
// RunPodSandbox to show that a slow plugin does not block pods.
package nriplugin

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	api "github.com/containerd/nri/pkg/api"
	"github.com/containerd/nri/pkg/stub"
)

// Event is one event the plugin saw.
type Event struct {
	Type        string
	PodID       string
	ContainerID string
	// Name is the container's (CRI metadata) name, or the pod's.
	Name string
	// MemoryLimit is the pod-level memory limit an UpdatePodSandbox event
	// carried (0: none).
	MemoryLimit int64
}

// Plugin records events and adjusts containers; set its fields before
// Start.
type Plugin struct {
	// Env and Mounts are added to every container created.
	Env    map[string]string
	Mounts []*api.Mount
	// Adjust, when set, adjusts every container created as well.
	Adjust func(*api.ContainerAdjustment)
	// HangRunPodSandbox makes RunPodSandbox wait until NRI gives up on it
	// (its context ends); Hung is closed then.
	HangRunPodSandbox bool
	Hung              chan struct{}
	// RefuseResize makes UpdatePodSandbox fail: the runtime must refuse
	// the pod's resize.
	RefuseResize bool

	mu       sync.Mutex
	events   []Event
	synced   chan struct{}
	syncPods []string
	syncCtrs []string
	stub     stub.Stub
	done     chan error
}

// Start connects a plugin named idx-name to the runtime at socket and
// waits until it is synchronized.
func Start(ctx context.Context, socket, name, idx string, p *Plugin) error {
	p.synced = make(chan struct{})
	p.done = make(chan error, 1)
	if p.Hung == nil {
		p.Hung = make(chan struct{})
	}
	s, err := stub.New(p, stub.WithSocketPath(socket), stub.WithPluginName(name), stub.WithPluginIdx(idx))
	if err != nil {
		return err
	}
	p.stub = s
	go func() { p.done <- s.Run(context.WithoutCancel(ctx)) }()
	select {
	case <-p.synced:
		return nil
	case err := <-p.done:
		return fmt.Errorf("plugin %s-%s ended before it was synchronized: %w", idx, name, err)
	case <-ctx.Done():
		s.Stop()
		return ctx.Err()
	}
}

// Stop disconnects the plugin.
func (p *Plugin) Stop() {
	if p.stub != nil {
		p.stub.Stop()
		p.stub.Wait()
	}
}

// Done is closed-ish: it yields Run's end (the runtime closed the
// connection, or Stop).
func (p *Plugin) Done() <-chan error { return p.done }

// Events are the events seen so far.
func (p *Plugin) Events() []Event {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]Event(nil), p.events...)
}

// Synchronized are the ids of the pods and containers the runtime
// synchronized the plugin with.
func (p *Plugin) Synchronized() (pods, containers []string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.syncPods...), append([]string(nil), p.syncCtrs...)
}

// WaitEvent waits for an event of type typ about id (a pod's or a
// container's).
func (p *Plugin) WaitEvent(ctx context.Context, typ, id string) (Event, error) {
	for {
		for _, e := range p.Events() {
			if e.Type == typ && (e.ContainerID == id || (e.ContainerID == "" && e.PodID == id)) {
				return e, nil
			}
		}
		select {
		case <-ctx.Done():
			return Event{}, fmt.Errorf("no %s event for %s: %w", typ, id, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (p *Plugin) record(typ string, pod *api.PodSandbox, c *api.Container) {
	e := Event{Type: typ, PodID: pod.GetId(), Name: pod.GetName()}
	if c != nil {
		e.ContainerID, e.Name = c.GetId(), c.GetName()
	}
	p.mu.Lock()
	p.events = append(p.events, e)
	p.mu.Unlock()
}

// Synchronize records what the runtime has.
func (p *Plugin) Synchronize(_ context.Context, pods []*api.PodSandbox, ctrs []*api.Container) ([]*api.ContainerUpdate, error) {
	p.mu.Lock()
	for _, pod := range pods {
		p.syncPods = append(p.syncPods, pod.GetId())
	}
	for _, c := range ctrs {
		p.syncCtrs = append(p.syncCtrs, c.GetId())
	}
	p.mu.Unlock()
	close(p.synced)
	return nil, nil
}

func (p *Plugin) RunPodSandbox(ctx context.Context, pod *api.PodSandbox) error {
	p.record("RunPodSandbox", pod, nil)
	if p.HangRunPodSandbox {
		<-ctx.Done()
		close(p.Hung)
		// The context carries the runtime's own deadline: an answer sent
		// at once could reach the runtime before it gives up, as a
		// plugin's failure. A hung plugin answers late, if ever.
		time.Sleep(5 * time.Second)
		return errors.New("hung until the runtime gave up")
	}
	return nil
}

func (p *Plugin) UpdatePodSandbox(_ context.Context, pod *api.PodSandbox, _, res *api.LinuxResources) error {
	e := Event{Type: "UpdatePodSandbox", PodID: pod.GetId(), Name: pod.GetName(), MemoryLimit: res.GetMemory().GetLimit().GetValue()}
	p.mu.Lock()
	p.events = append(p.events, e)
	p.mu.Unlock()
	if p.RefuseResize {
		return errors.New("this plugin refuses every resize")
	}
	return nil
}

func (p *Plugin) PostUpdatePodSandbox(_ context.Context, pod *api.PodSandbox) error {
	p.record("PostUpdatePodSandbox", pod, nil)
	return nil
}

func (p *Plugin) StopPodSandbox(_ context.Context, pod *api.PodSandbox) error {
	p.record("StopPodSandbox", pod, nil)
	return nil
}

func (p *Plugin) RemovePodSandbox(_ context.Context, pod *api.PodSandbox) error {
	p.record("RemovePodSandbox", pod, nil)
	return nil
}

func (p *Plugin) CreateContainer(_ context.Context, pod *api.PodSandbox, c *api.Container) (*api.ContainerAdjustment, []*api.ContainerUpdate, error) {
	p.record("CreateContainer", pod, c)
	adj := &api.ContainerAdjustment{}
	for k, v := range p.Env {
		adj.AddEnv(k, v)
	}
	for _, m := range p.Mounts {
		adj.AddMount(m)
	}
	if p.Adjust != nil {
		p.Adjust(adj)
	}
	return adj, nil, nil
}

func (p *Plugin) PostCreateContainer(_ context.Context, pod *api.PodSandbox, c *api.Container) error {
	p.record("PostCreateContainer", pod, c)
	return nil
}

func (p *Plugin) StartContainer(_ context.Context, pod *api.PodSandbox, c *api.Container) error {
	p.record("StartContainer", pod, c)
	return nil
}

func (p *Plugin) PostStartContainer(_ context.Context, pod *api.PodSandbox, c *api.Container) error {
	p.record("PostStartContainer", pod, c)
	return nil
}

func (p *Plugin) UpdateContainer(_ context.Context, pod *api.PodSandbox, c *api.Container, _ *api.LinuxResources) ([]*api.ContainerUpdate, error) {
	p.record("UpdateContainer", pod, c)
	return nil, nil
}

func (p *Plugin) PostUpdateContainer(_ context.Context, pod *api.PodSandbox, c *api.Container) error {
	p.record("PostUpdateContainer", pod, c)
	return nil
}

func (p *Plugin) StopContainer(_ context.Context, pod *api.PodSandbox, c *api.Container) ([]*api.ContainerUpdate, error) {
	p.record("StopContainer", pod, c)
	return nil, nil
}

func (p *Plugin) RemoveContainer(_ context.Context, pod *api.PodSandbox, c *api.Container) error {
	p.record("RemoveContainer", pod, c)
	return nil
}
