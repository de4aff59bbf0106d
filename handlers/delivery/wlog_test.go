package delivery

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/ThreeDotsLabs/watermill"
)

// A Watermill error that is only the engine's context ending (a stop) is
// logged at debug; any other error stays an error, fields kept.
func TestWatermillLoggerQuietsOnlyCancellation(t *testing.T) {
	var buf bytes.Buffer
	l := newWatermillLogger(slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))).
		With(watermill.LogFields{"consumer_group": "scheduler"})
	l.Error("could not commit tx for querying message", fmt.Errorf("commit: %w", context.Canceled), nil)
	l.Error("could not query message", errors.New("connection refused"), watermill.LogFields{"topic": "events"})
	l.Info("subscribing", nil)
	var got []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("%q: %v", line, err)
		}
		got = append(got, m)
	}
	if len(got) != 3 {
		t.Fatalf("logged %d lines, want 3:\n%s", len(got), buf.String())
	}
	for i, want := range []struct{ level, err string }{{"DEBUG", "commit: context canceled"}, {"ERROR", "connection refused"}, {"DEBUG", ""}} {
		if got[i]["level"] != want.level || got[i]["component"] != "watermill" || got[i]["consumer_group"] != "scheduler" {
			t.Errorf("line %d = %v, want level %s with the component and the consumer group", i, got[i], want.level)
		}
		if want.err != "" && got[i]["err"] != want.err && got[i]["error"] != want.err {
			t.Errorf("line %d = %v, want the error %q", i, got[i], want.err)
		}
	}
}
