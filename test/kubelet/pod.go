package kubelet

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Pod is the part of a core/v1 Pod that the tests read, decoded from the
// kubelet's /pods (a v1.PodList) without depending on k8s.io/api.
type Pod struct {
	Metadata ObjectMeta `json:"metadata"`
	Spec     PodSpec    `json:"spec"`
	Status   PodStatus  `json:"status"`
}

// ObjectMeta is a part of metav1.ObjectMeta.
type ObjectMeta struct {
	Name        string            `json:"name"`
	Namespace   string            `json:"namespace"`
	UID         string            `json:"uid"`
	Labels      map[string]string `json:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

// PodSpec is a part of v1.PodSpec.
type PodSpec struct {
	NodeName    string      `json:"nodeName,omitempty"`
	HostNetwork bool        `json:"hostNetwork,omitempty"`
	Containers  []Container `json:"containers"`
}

// Container is a part of v1.Container.
type Container struct {
	Name    string   `json:"name"`
	Image   string   `json:"image"`
	Command []string `json:"command,omitempty"`
	Args    []string `json:"args,omitempty"`
}

// Pod phases.
const (
	PodPending   = "Pending"
	PodRunning   = "Running"
	PodSucceeded = "Succeeded"
	PodFailed    = "Failed"
)

// PodStatus is a part of v1.PodStatus.
type PodStatus struct {
	Phase             string            `json:"phase,omitempty"`
	Reason            string            `json:"reason,omitempty"`
	Message           string            `json:"message,omitempty"`
	HostIP            string            `json:"hostIP,omitempty"`
	PodIP             string            `json:"podIP,omitempty"`
	PodIPs            []PodIP           `json:"podIPs,omitempty"`
	StartTime         string            `json:"startTime,omitempty"`
	Conditions        []PodCondition    `json:"conditions,omitempty"`
	ContainerStatuses []ContainerStatus `json:"containerStatuses,omitempty"`
}

// PodIP is v1.PodIP.
type PodIP struct {
	IP string `json:"ip"`
}

// PodCondition is a part of v1.PodCondition.
type PodCondition struct {
	Type    string `json:"type"`
	Status  string `json:"status"`
	Reason  string `json:"reason,omitempty"`
	Message string `json:"message,omitempty"`
}

// ContainerStatus is a part of v1.ContainerStatus.
type ContainerStatus struct {
	Name         string         `json:"name"`
	Ready        bool           `json:"ready"`
	RestartCount int            `json:"restartCount"`
	Image        string         `json:"image"`
	ImageID      string         `json:"imageID"`
	ContainerID  string         `json:"containerID,omitempty"`
	Started      *bool          `json:"started,omitempty"`
	State        ContainerState `json:"state"`
	LastState    ContainerState `json:"lastState"`
}

// ContainerState is v1.ContainerState, one of the three set.
type ContainerState struct {
	Waiting *struct {
		Reason  string `json:"reason,omitempty"`
		Message string `json:"message,omitempty"`
	} `json:"waiting,omitempty"`
	Running *struct {
		StartedAt string `json:"startedAt,omitempty"`
	} `json:"running,omitempty"`
	Terminated *struct {
		ExitCode   int    `json:"exitCode"`
		Signal     int    `json:"signal,omitempty"`
		Reason     string `json:"reason,omitempty"`
		Message    string `json:"message,omitempty"`
		StartedAt  string `json:"startedAt,omitempty"`
		FinishedAt string `json:"finishedAt,omitempty"`
	} `json:"terminated,omitempty"`
}

// String is the pod as one line of JSON, for failure messages.
func (p *Pod) String() string {
	b, err := json.Marshal(p)
	if err != nil {
		return fmt.Sprintf("%s/%s: %v", p.Metadata.Namespace, p.Metadata.Name, err)
	}
	return string(b)
}

// ContainerStatus returns the status of the named container, or nil.
func (p *Pod) ContainerStatus(name string) *ContainerStatus {
	for i := range p.Status.ContainerStatuses {
		if p.Status.ContainerStatuses[i].Name == name {
			return &p.Status.ContainerStatuses[i]
		}
	}
	return nil
}

// Pods returns the pods of the kubelet's read-only /pods endpoint, with the
// status the kubelet computed for static pods.
func (k *Kubelet) Pods(ctx context.Context) ([]Pod, error) {
	var list struct {
		Items []Pod `json:"items"`
	}
	err := k.get(ctx, k.readOnly+"/pods", func(b []byte) error {
		if err := json.Unmarshal(b, &list); err != nil {
			return fmt.Errorf("decode /pods: %w", err)
		}
		return nil
	})
	return list.Items, err
}

// RunningPods returns the main server's /runningpods/: the pods of which
// the runtime runs a container or has a ready sandbox, as the kubelet sees
// them through the CRI (metadata and containers' names only).
func (k *Kubelet) RunningPods(ctx context.Context) ([]Pod, error) {
	var list struct {
		Items []Pod `json:"items"`
	}
	err := k.get(ctx, k.main+"/runningpods/", func(b []byte) error {
		if err := json.Unmarshal(b, &list); err != nil {
			return fmt.Errorf("decode /runningpods/: %w", err)
		}
		return nil
	})
	return list.Items, err
}

// StaticPodName is the name the kubelet gives the static pod of a manifest
// named name: "<name>-<node name>".
func (k *Kubelet) StaticPodName(name string) string {
	if strings.HasSuffix(name, "-"+k.cfg.NodeName) {
		return name
	}
	return name + "-" + k.cfg.NodeName
}

// Pod returns the pod of /pods named name (the manifest's name or the static
// pod's full name) in namespace ("" is "default"), or nil.
func (k *Kubelet) Pod(ctx context.Context, name, namespace string) (*Pod, error) {
	pods, err := k.Pods(ctx)
	if err != nil {
		return nil, err
	}
	if namespace == "" {
		namespace = "default"
	}
	full := k.StaticPodName(name)
	for i := range pods {
		p := &pods[i]
		if p.Metadata.Namespace == namespace && (p.Metadata.Name == full || p.Metadata.Name == name) {
			return p, nil
		}
	}
	return nil, nil
}

// WaitPodPhase waits until the pod named name (see Pod) reports phase and,
// for Running, every container is running and ready. It fails the test,
// with the pod's last status, on timeout, when the kubelet exits, or when
// the pod reaches another terminal phase first.
func (k *Kubelet) WaitPodPhase(t testing.TB, name, namespace, phase string, timeout time.Duration) *Pod {
	t.Helper()
	var last *Pod
	var lastErr error
	done := func(p *Pod) bool {
		if p == nil || p.Status.Phase != phase {
			return false
		}
		if phase != PodRunning {
			return true
		}
		if len(p.Status.ContainerStatuses) < len(p.Spec.Containers) {
			return false
		}
		for _, cs := range p.Status.ContainerStatuses {
			if cs.State.Running == nil || !cs.Ready {
				return false
			}
		}
		return true
	}
	ok := k.poll(timeout, func(ctx context.Context) bool {
		last, lastErr = k.Pod(ctx, name, namespace)
		if done(last) {
			return true
		}
		if last != nil && last.Status.Phase != phase &&
			(last.Status.Phase == PodFailed || last.Status.Phase == PodSucceeded) {
			t.Fatalf("pod %s/%s reached phase %s while waiting for %s: %s", namespace, name, last.Status.Phase, phase, last)
		}
		return false
	})
	if !ok {
		t.Fatalf("pod %s/%s not %s after %s (kubelet exited: %v, last error: %v); last status: %s\nruntime errors in the kubelet log:\n%s",
			namespace, name, phase, timeout, k.Exited(), lastErr, last, strings.Join(k.errorLines(20), "\n"))
	}
	return last
}

// WaitPodGone waits until /pods no longer lists the pod and the runtime no
// longer runs it (/runningpods/): what follows the removal of its manifest.
func (k *Kubelet) WaitPodGone(t testing.TB, name, namespace string, timeout time.Duration) {
	t.Helper()
	if namespace == "" {
		namespace = "default"
	}
	full := k.StaticPodName(name)
	var listed *Pod
	var running []Pod
	var lastErr error
	if !k.poll(timeout, func(ctx context.Context) bool {
		if listed, lastErr = k.Pod(ctx, name, namespace); lastErr != nil || listed != nil {
			return false
		}
		all, err := k.RunningPods(ctx)
		if lastErr = err; err != nil {
			return false
		}
		running = running[:0]
		for _, p := range all {
			if p.Metadata.Namespace == namespace && (p.Metadata.Name == full || p.Metadata.Name == name) {
				running = append(running, p)
			}
		}
		return len(running) == 0
	}) {
		t.Fatalf("pod %s/%s not gone after %s (last error %v): listed %v, running in the runtime %v",
			namespace, name, timeout, lastErr, listed, podNames(running))
	}
}

// poll calls f every 500ms until it returns true, the timeout passes or the
// kubelet exits.
func (k *Kubelet) poll(timeout time.Duration, f func(context.Context) bool) bool {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for {
		if f(ctx) {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-k.done:
			return false
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// errorLines returns the last n error lines ("E" klog lines) of the log.
func (k *Kubelet) errorLines(n int) []string {
	lines := k.LogLines("] ")
	var out []string
	for _, l := range lines {
		if strings.HasPrefix(l, "E") {
			out = append(out, l)
		}
	}
	if len(out) > n {
		out = out[len(out)-n:]
	}
	return out
}

// StaticPod is a manifest written to the static pod dir.
type StaticPod struct {
	// Name and Namespace are the manifest's; the pod's name in /pods is
	// Kubelet.StaticPodName(Name).
	Name, Namespace string
	// Path is the manifest file.
	Path string
}

// WriteStaticPod writes manifest (YAML or JSON of one v1 Pod) to the static
// pod dir as "<namespace>_<name>.yaml", atomically, and returns where. The
// name and namespace are read from the manifest's metadata.
func (k *Kubelet) WriteStaticPod(t testing.TB, manifest string) StaticPod {
	t.Helper()
	name, ns, err := manifestName(manifest)
	if err != nil {
		t.Fatalf("static pod manifest: %v\n%s", err, manifest)
	}
	sp := StaticPod{Name: name, Namespace: ns, Path: filepath.Join(k.cfg.StaticPodDir, ns+"_"+name+".yaml")}
	// The kubelet ignores files whose name starts with a dot.
	tmp := filepath.Join(k.cfg.StaticPodDir, "."+filepath.Base(sp.Path)+".tmp")
	if err := os.WriteFile(tmp, []byte(manifest), 0o644); err != nil {
		t.Fatalf("write static pod: %v", err)
	}
	if err := os.Rename(tmp, sp.Path); err != nil {
		t.Fatalf("write static pod: %v", err)
	}
	return sp
}

// RemoveStaticPod removes the manifest of the pod named name in namespace
// ("" is "default") from the static pod dir; the kubelet then stops the pod.
func (k *Kubelet) RemoveStaticPod(t testing.TB, name, namespace string) {
	t.Helper()
	if namespace == "" {
		namespace = "default"
	}
	p := filepath.Join(k.cfg.StaticPodDir, namespace+"_"+name+".yaml")
	if err := os.Remove(p); err != nil {
		t.Fatalf("remove static pod: %v", err)
	}
}

// manifestName reads metadata.name and metadata.namespace of a pod
// manifest, JSON or block-style YAML.
func manifestName(manifest string) (name, namespace string, err error) {
	if s := strings.TrimSpace(manifest); strings.HasPrefix(s, "{") {
		var p Pod
		if err := json.Unmarshal([]byte(s), &p); err != nil {
			return "", "", err
		}
		name, namespace = p.Metadata.Name, p.Metadata.Namespace
	} else {
		inMeta, indent := false, -1
		for _, line := range strings.Split(manifest, "\n") {
			trimmed := strings.TrimSpace(line)
			if trimmed == "" || strings.HasPrefix(trimmed, "#") {
				continue
			}
			depth := len(line) - len(strings.TrimLeft(line, " "))
			if depth == 0 {
				inMeta = strings.HasPrefix(trimmed, "metadata:")
				indent = -1
				continue
			}
			if !inMeta {
				continue
			}
			if indent < 0 {
				indent = depth
			}
			if depth != indent {
				continue
			}
			key, val, ok := strings.Cut(trimmed, ":")
			if !ok {
				continue
			}
			val = unquote(strings.TrimSpace(val))
			switch key {
			case "name":
				name = val
			case "namespace":
				namespace = val
			}
		}
	}
	if name == "" {
		return "", "", fmt.Errorf("no metadata.name")
	}
	if namespace == "" {
		namespace = "default"
	}
	return name, namespace, nil
}

func unquote(s string) string {
	if u, err := strconv.Unquote(s); err == nil {
		return u
	}
	if len(s) >= 2 && s[0] == '\'' && s[len(s)-1] == '\'' {
		return strings.ReplaceAll(s[1:len(s)-1], "''", "'")
	}
	return s
}

// PodSpecOptions shape the manifest of BusyboxPod.
type PodSpecOptions struct {
	Name, Namespace string
	Image           string
	// Container defaults to "main".
	Container string
	// Script is run by /bin/sh -c.
	Script      string
	HostNetwork bool
	// RestartPolicy defaults to Always.
	RestartPolicy string
	// TerminationGracePeriodSeconds defaults to 2.
	TerminationGracePeriodSeconds int
}

// BusyboxPod returns the JSON manifest of a pod with one container running
// `sh -c Script` in Image, pulled IfNotPresent.
func BusyboxPod(o PodSpecOptions) string {
	if o.Namespace == "" {
		o.Namespace = "default"
	}
	if o.Container == "" {
		o.Container = "main"
	}
	if o.RestartPolicy == "" {
		o.RestartPolicy = "Always"
	}
	if o.TerminationGracePeriodSeconds == 0 {
		o.TerminationGracePeriodSeconds = 2
	}
	m := map[string]any{
		"apiVersion": "v1",
		"kind":       "Pod",
		"metadata":   map[string]any{"name": o.Name, "namespace": o.Namespace},
		"spec": map[string]any{
			"hostNetwork":                   o.HostNetwork,
			"restartPolicy":                 o.RestartPolicy,
			"terminationGracePeriodSeconds": o.TerminationGracePeriodSeconds,
			"containers": []any{map[string]any{
				"name":            o.Container,
				"image":           o.Image,
				"imagePullPolicy": "IfNotPresent",
				"command":         []string{"/bin/sh", "-c", o.Script},
			}},
		},
	}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		panic(err)
	}
	return string(b)
}

// ContainerLogPath is where the kubelet asks the runtime to write the log of
// container (restart restart) of pod p:
// <podLogsDir>/<namespace>_<pod name>_<uid>/<container>/<restart>.log.
func (k *Kubelet) ContainerLogPath(p *Pod, container string, restart int) string {
	return filepath.Join(k.cfg.PodLogsDir,
		p.Metadata.Namespace+"_"+p.Metadata.Name+"_"+p.Metadata.UID,
		container, strconv.Itoa(restart)+".log")
}

// WaitContainerLog waits until the log of the container's first run holds
// a CRI-format line ("<RFC3339Nano> stdout|stderr P|F <text>") whose text
// contains substr, and returns the whole log.
func (k *Kubelet) WaitContainerLog(t testing.TB, p *Pod, container, substr string, timeout time.Duration) string {
	t.Helper()
	path := k.ContainerLogPath(p, container, 0)
	var content string
	var lastErr error
	if !k.poll(timeout, func(context.Context) bool {
		b, err := os.ReadFile(path)
		if err != nil {
			lastErr = err
			return false
		}
		content = string(b)
		for _, line := range strings.Split(content, "\n") {
			if l, err := ParseCRILogLine(line); err == nil && strings.Contains(l.Text, substr) {
				return true
			}
		}
		return false
	}) {
		t.Fatalf("no CRI log line with %q in %s after %s (%v); content:\n%s", substr, path, timeout, lastErr, tailString(content, 4096))
	}
	return content
}

// CRILogLine is one line of a container log in the kubelet's CRI format.
type CRILogLine struct {
	Time    time.Time
	Stream  string // stdout or stderr
	Partial bool   // tag P: the line continues in the next entry
	Text    string
}

// ParseCRILogLine parses "<RFC3339Nano> <stream> <P|F> <text>".
func ParseCRILogLine(line string) (CRILogLine, error) {
	var l CRILogLine
	parts := strings.SplitN(line, " ", 4)
	if len(parts) < 3 {
		return l, fmt.Errorf("not a CRI log line: %q", line)
	}
	ts, err := time.Parse(time.RFC3339Nano, parts[0])
	if err != nil {
		return l, fmt.Errorf("CRI log line time: %w", err)
	}
	if parts[1] != "stdout" && parts[1] != "stderr" {
		return l, fmt.Errorf("CRI log line stream %q", parts[1])
	}
	tags := strings.Split(parts[2], ":")
	if tags[0] != "P" && tags[0] != "F" {
		return l, fmt.Errorf("CRI log line tag %q", parts[2])
	}
	l.Time, l.Stream, l.Partial = ts, parts[1], tags[0] == "P"
	if len(parts) == 4 {
		l.Text = parts[3]
	}
	return l, nil
}

func podNames(pods []Pod) []string {
	out := make([]string, len(pods))
	for i, p := range pods {
		out[i] = p.Metadata.Namespace + "/" + p.Metadata.Name
	}
	return out
}
