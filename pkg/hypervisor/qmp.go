package hypervisor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"time"

	"golang.org/x/sys/unix"
)

// qmp is a connection to a QEMU Machine Protocol socket: JSON objects, one
// after the other, in both directions. QEMU serves one client at a time on
// a socket, so every operation opens its own short connection.
type qmp struct {
	conn net.Conn
	dec  *json.Decoder
	enc  *json.Encoder
	id   int
	stop func() bool
}

// qmpDefaultTimeout bounds a QMP exchange whose ctx has no deadline.
const qmpDefaultTimeout = 5 * time.Second

// QMPError is an error answered by QEMU.
type QMPError struct {
	Class string `json:"class"`
	Desc  string `json:"desc"`
}

func (e *QMPError) Error() string { return fmt.Sprintf("qmp: %s: %s", e.Class, e.Desc) }

type qmpMessage struct {
	QMP    json.RawMessage `json:"QMP"`
	Return json.RawMessage `json:"return"`
	Error  *QMPError       `json:"error"`
	Event  string          `json:"event"`
	ID     json.RawMessage `json:"id"`
}

// dialQMP connects to path, reads the greeting and leaves negotiation mode.
func dialQMP(ctx context.Context, path string) (*qmp, error) {
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(qmpDefaultTimeout)
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("qmp: %w", err)
	}
	if err := conn.SetDeadline(deadline); err != nil {
		conn.Close()
		return nil, err
	}
	// Unblock reads when ctx ends before the deadline.
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	q := &qmp{conn: conn, dec: json.NewDecoder(conn), enc: json.NewEncoder(conn), stop: stop}
	var greeting qmpMessage
	if err := q.dec.Decode(&greeting); err != nil {
		stop()
		conn.Close()
		return nil, fmt.Errorf("qmp greeting on %s: %w", path, err)
	}
	if greeting.QMP == nil {
		stop()
		conn.Close()
		return nil, fmt.Errorf("qmp: %s: no greeting, not a QMP socket", path)
	}
	if _, err := q.execute("qmp_capabilities", nil); err != nil {
		stop()
		conn.Close()
		return nil, err
	}
	return q, nil
}

func (q *qmp) close() error {
	q.stop()
	return q.conn.Close()
}

// execute runs a command and returns its "return" value, skipping the
// asynchronous events QEMU sends in between.
func (q *qmp) execute(cmd string, args any) (json.RawMessage, error) {
	return q.executeFD(cmd, args, -1)
}

// executeFD is execute that passes fd along (SCM_RIGHTS), for getfd;
// fd < 0 passes none.
func (q *qmp) executeFD(cmd string, args any, fd int) (json.RawMessage, error) {
	q.id++
	req := map[string]any{"execute": cmd, "id": q.id}
	if args != nil {
		req["arguments"] = args
	}
	if fd < 0 {
		if err := q.enc.Encode(req); err != nil {
			return nil, fmt.Errorf("qmp %s: %w", cmd, err)
		}
	} else {
		uc, ok := q.conn.(*net.UnixConn)
		if !ok {
			return nil, fmt.Errorf("qmp %s: passing a file needs a unix socket", cmd)
		}
		b, err := json.Marshal(req)
		if err != nil {
			return nil, err
		}
		if _, _, err := uc.WriteMsgUnix(b, unix.UnixRights(fd), nil); err != nil {
			return nil, fmt.Errorf("qmp %s: %w", cmd, err)
		}
	}
	for {
		var m qmpMessage
		if err := q.dec.Decode(&m); err != nil {
			return nil, fmt.Errorf("qmp %s: %w", cmd, err)
		}
		switch {
		case m.Event != "":
			continue
		case m.Error != nil:
			return nil, fmt.Errorf("qmp %s: %w", cmd, m.Error)
		case m.Return != nil:
			return m.Return, nil
		}
	}
}

// qmpDo connects, runs one command and disconnects.
func qmpDo(ctx context.Context, socket, cmd string, args any) (json.RawMessage, error) {
	q, err := dialQMP(ctx, socket)
	if err != nil {
		return nil, err
	}
	defer func() { _ = q.close() }()
	return q.execute(cmd, args)
}

// qmpStatus runs query-status.
func qmpStatus(ctx context.Context, socket string) (string, error) {
	ret, err := qmpDo(ctx, socket, "query-status", nil)
	if err != nil {
		return "", err
	}
	var st struct {
		Status  string `json:"status"`
		Running bool   `json:"running"`
	}
	if err := json.Unmarshal(ret, &st); err != nil {
		return "", fmt.Errorf("qmp query-status: %w", err)
	}
	if st.Status == "" {
		return "", errors.New("qmp query-status: empty status")
	}
	return st.Status, nil
}
