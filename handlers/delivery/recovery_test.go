package delivery

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"
)

func TestDeliveryPanicIsAFailedAttempt(t *testing.T) {
	e := NewEngine(EngineParams{Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	e.client = nil // a nil client panics inside send
	res := e.sendRecovered(context.Background(), dispatchJob{DeliveryID: "d", AttemptID: "a", DestFound: true,
		URL: "https://example.com/hook", SendURL: "https://example.com/hook", Method: "POST", TimeoutMS: 1000, Headers: map[string]string{}})
	if res.Status != "failed" || res.Error == nil || !strings.Contains(*res.Error, "internal error") || res.AttemptID != "a" {
		t.Fatalf("attempt = %+v", res)
	}
}
