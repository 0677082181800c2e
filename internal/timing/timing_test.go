package timing

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"testing"
	"time"
)

func TestStepsLog(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	s := Start()
	s.Done("first")
	t0 := time.Now()
	s.Done("second")
	s.Since("overlap", t0)
	s.Log(context.Background(), log, "call steps", "pod", "p1")
	var line struct {
		Msg     string             `json:"msg"`
		Pod     string             `json:"pod"`
		MS      map[string]float64 `json:"ms"`
		TotalMS *float64           `json:"total_ms"`
	}
	if err := json.Unmarshal(buf.Bytes(), &line); err != nil {
		t.Fatalf("%v: %s", err, buf.Bytes())
	}
	if line.Msg != "call steps" || line.Pod != "p1" || line.TotalMS == nil {
		t.Fatalf("line %s", buf.Bytes())
	}
	for _, k := range []string{"first", "second", "overlap"} {
		if _, ok := line.MS[k]; !ok {
			t.Errorf("step %q missing from %s", k, buf.Bytes())
		}
	}
	if bytes.Count(buf.Bytes(), []byte("\n")) != 1 {
		t.Errorf("want one line, got %s", buf.Bytes())
	}
}

func TestStepsQuietAboveDebug(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo}))
	s := Start()
	s.Done("a")
	s.Log(context.Background(), log, "call steps")
	var nilSteps *Steps
	nilSteps.Done("a")
	nilSteps.Log(context.Background(), log, "call steps")
	if buf.Len() != 0 {
		t.Fatalf("logged at info level: %s", buf.Bytes())
	}
}

func TestCalls(t *testing.T) {
	if CallsFrom(context.Background()) != nil {
		t.Fatal("a context without Calls has some")
	}
	var none *Calls
	none.Add("/x.v1.Y/Z", time.Second) // a nil Calls records nothing
	ctx, c := WithCalls(context.Background())
	if CallsFrom(ctx) != c {
		t.Fatal("CallsFrom does not find the Calls of WithCalls")
	}
	c.Add("/containerd.services.content.v1.Content/Info", 2*time.Millisecond)
	c.Add("/containerd.services.content.v1.Content/Info", time.Millisecond)
	c.Add("/containerd.services.diff.v1.Diff/Apply", 5*time.Millisecond)
	var buf bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	log.Debug("x", c.Attrs("containerd")...)
	var line struct {
		Calls int                `json:"containerd_calls"`
		MS    map[string]float64 `json:"containerd_ms"`
		N     map[string]int     `json:"containerd_n"`
	}
	if err := json.Unmarshal(buf.Bytes(), &line); err != nil {
		t.Fatalf("%v: %s", err, buf.Bytes())
	}
	if line.Calls != 3 || line.MS["Content/Info"] != 3 || line.MS["Diff/Apply"] != 5 || len(line.MS) != 2 ||
		line.N["Content/Info"] != 2 || line.N["Diff/Apply"] != 1 || len(line.N) != 2 {
		t.Fatalf("calls %s", buf.Bytes())
	}
}
