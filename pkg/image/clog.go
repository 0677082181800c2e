package image

import (
	"context"
	"io"
	"log/slog"

	clog "github.com/containerd/log"
	"github.com/sirupsen/logrus"
)

// containerdLogger sends what containerd's client libraries log (through
// logrus) to the service's slog logger: their per-request Info lines at
// Debug, warnings and errors as they are.
func containerdLogger(logger *slog.Logger) *clog.Entry {
	l := logrus.New()
	l.SetOutput(io.Discard)
	l.SetLevel(logrus.DebugLevel)
	l.AddHook(slogHook{logger})
	return logrus.NewEntry(l)
}

type slogHook struct{ logger *slog.Logger }

func (slogHook) Levels() []logrus.Level { return logrus.AllLevels }

func (h slogHook) Fire(e *logrus.Entry) error {
	level := slog.LevelDebug
	switch {
	case e.Level <= logrus.ErrorLevel:
		level = slog.LevelError
	case e.Level == logrus.WarnLevel:
		level = slog.LevelWarn
	}
	ctx := e.Context
	if ctx == nil {
		ctx = context.Background()
	}
	if !h.logger.Enabled(ctx, level) {
		return nil
	}
	attrs := make([]any, 0, 2*len(e.Data)+2)
	attrs = append(attrs, "source", "containerd")
	for k, v := range e.Data {
		attrs = append(attrs, k, v)
	}
	h.logger.Log(ctx, level, e.Message, attrs...)
	return nil
}
