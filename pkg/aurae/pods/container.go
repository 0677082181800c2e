package pods

import (
	"sync"
	"sync/atomic"

	podsv0 "github.com/aurae-runtime/aurae-cri/api/pods/v0"
)

// container is a container of a pod. Its record changes only under mu.
//
//	(reserved) ──create──▶ CREATED ──runc start──▶ RUNNING ──exit──▶ EXITED
//	                          └──────────────── exit ───────────────────┘
type container struct {
	id    string
	podID string

	mu  sync.Mutex
	rec ctrRecord
	// done is closed when the container has exited (its monitor is gone).
	done chan struct{}
	// res: the id is reserved by a Start still in progress.
	res bool
	// released is closed when the deletion of the runtime's container
	// that the exit started (release) has ended; runtimeGone says it
	// succeeded. nil when none was started.
	released    chan struct{}
	runtimeGone bool
	// follower is the ContainerLog stream of a log_stream container;
	// logDropped is how much of its log file was punched out.
	follower   *logFollower
	logDropped int64
	// oomSeen: watchOOM saw an OOM kill in its cgroup.
	oomSeen atomic.Bool
}

// ctrRecord is what the state file keeps of a container.
type ctrRecord struct {
	ID         string `json:"id"`
	PodID      string `json:"pod_id"`
	LogPath    string `json:"log_path,omitempty"`
	LogStream  bool   `json:"log_stream,omitempty"`
	CgroupPath string `json:"cgroup_path"`
	OwnPID     bool   `json:"own_pid,omitempty"`
	// Stdin: the monitor keeps the container's stdin open (Restart
	// starts it again so).
	Stdin       bool   `json:"stdin,omitempty"`
	State       int32  `json:"state"`
	Pid         int    `json:"pid,omitempty"`
	ConmonPid   int    `json:"conmon_pid,omitempty"`
	ConmonStart uint64 `json:"conmon_start,omitempty"`
	ExitCode    int32  `json:"exit_code"`
	CreatedAt   int64  `json:"created_at"`
	StartedAt   int64  `json:"started_at,omitempty"`
	FinishedAt  int64  `json:"finished_at,omitempty"`
	Reason      string `json:"reason,omitempty"`
	Message     string `json:"message,omitempty"`
}

const (
	stateUnknown = int32(podsv0.ContainerState_CONTAINER_STATE_UNKNOWN)
	stateCreated = int32(podsv0.ContainerState_CONTAINER_STATE_CREATED)
	stateRunning = int32(podsv0.ContainerState_CONTAINER_STATE_RUNNING)
	stateExited  = int32(podsv0.ContainerState_CONTAINER_STATE_EXITED)
)

func (c *container) reserved() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.res
}

func (c *container) record() ctrRecord {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.rec
}

func (c *container) status() *podsv0.ContainerStatus { return statusOf(c.record()) }

func statusOf(r ctrRecord) *podsv0.ContainerStatus {
	return &podsv0.ContainerStatus{
		Id:         r.ID,
		PodId:      r.PodID,
		State:      podsv0.ContainerState(r.State),
		Pid:        int32(r.Pid),
		ExitCode:   r.ExitCode,
		CreatedAt:  r.CreatedAt,
		StartedAt:  r.StartedAt,
		FinishedAt: r.FinishedAt,
		Reason:     r.Reason,
		Message:    r.Message,
		LogPath:    r.LogPath,
		CgroupPath: r.CgroupPath,
	}
}

func isDone(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}
