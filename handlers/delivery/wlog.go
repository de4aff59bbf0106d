package delivery

import (
	"context"
	"errors"
	"log/slog"

	"github.com/ThreeDotsLabs/watermill"
)

// newWatermillLogger is the engine's logger for its Watermill routers and
// subscribers: their info is debug here, and an error that is only the
// engine's own context ending (a stop: the scheduler's subscriber had a
// query in flight when its context was cancelled) is debug too, so a clean
// shutdown logs no ERROR line.
func newWatermillLogger(log *slog.Logger) watermill.LoggerAdapter {
	return quietCancel{watermill.NewSlogLoggerWithLevelMapping(log.With("component", "watermill"),
		map[slog.Level]slog.Level{slog.LevelInfo: slog.LevelDebug})}
}

type quietCancel struct{ watermill.LoggerAdapter }

func (q quietCancel) Error(msg string, err error, fields watermill.LogFields) {
	if errors.Is(err, context.Canceled) {
		q.LoggerAdapter.Debug(msg, fields.Add(watermill.LogFields{"err": err.Error()}))
		return
	}
	q.LoggerAdapter.Error(msg, err, fields)
}

func (q quietCancel) With(fields watermill.LogFields) watermill.LoggerAdapter {
	return quietCancel{q.LoggerAdapter.With(fields)}
}
