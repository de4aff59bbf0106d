package audit

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/hookstream/hookstream/domain"
	"github.com/hookstream/hookstream/eventstore"
)

// The one-line texts of audit: event summaries and the short forms of ids,
// names and outcomes.

const TimeFmt = "2006-01-02 15:04:05.000"

// short is an id as the table shows it: whole, so it can be copied into the
// next command (ids are UUIDv7: their first characters are a timestamp that
// two deliveries of one event share, so no prefix tells them apart).
func Short(id string) string {
	if id == "" {
		return "-"
	}
	return id
}

func Named(name, id string) string {
	if id == "" {
		return "-"
	}
	if name == "" {
		return id
	}
	return fmt.Sprintf("%q (%s)", name, Short(id))
}

func Outcome(status string, code *int, errMsg *string) string {
	out := status
	if code != nil {
		out += fmt.Sprintf(" HTTP %d", *code)
	} else if errMsg != nil {
		out += ": " + *errMsg
	}
	return out
}

// summarize is one line naming an event's key payload fields.
func Summarize(e eventstore.Event) string {
	var p map[string]any
	if err := json.Unmarshal(e.Payload, &p); err != nil {
		return "unreadable payload: " + err.Error()
	}
	str := func(k string) string { s, _ := p[k].(string); return s }
	num := func(k string) int { f, _ := p[k].(float64); return int(f) }
	switch e.Type {
	case domain.EvEventReceived:
		return fmt.Sprintf("%s to source %s: %d bytes %s from %s; deliveries: %d", str("method"), Named(str("source_name"), str("source_id")),
			num("body_size"), orDash(str("content_type")), orDash(str("source_ip")), num("deliveries"))
	case domain.EvDeliveryRequested:
		s := fmt.Sprintf("attempt #1 (%s) %s %s to %s via %s", str("trigger_type"), str("request_method"), str("request_url"),
			Named(str("destination_name"), str("destination_id")), Named(str("connection_name"), str("connection_id")))
		if r := str("replay_id"); r != "" {
			s += " for replay " + r
		}
		return s
	case domain.EvDeliveryAttempted:
		var a domain.DeliveryAttempted
		if err := json.Unmarshal(e.Payload, &a); err != nil {
			return "unreadable payload: " + err.Error()
		}
		s := fmt.Sprintf("attempt #%d (%s): %s in %d ms", a.AttemptNumber, a.TriggerType, Outcome(a.Status, a.ResponseStatus, a.Error), a.DurationMS)
		if a.ResponseBody != nil && *a.ResponseBody != "" {
			s += fmt.Sprintf(", response %q", OneLine(*a.ResponseBody, 60))
		}
		return s
	case domain.EvRetryScheduled:
		var r domain.RetryScheduled
		if err := json.Unmarshal(e.Payload, &r); err != nil {
			return "unreadable payload: " + err.Error()
		}
		return fmt.Sprintf("attempt #%d (retry) not before %s", r.AttemptNumber, r.NotBefore.UTC().Format(TimeFmt))
	case domain.EvRetryRequested:
		return fmt.Sprintf("attempt #%d (manual) requested, retrying attempt %s", num("attempt_number"), Short(str("from_attempt_id")))
	case domain.EvMovedToDLQ:
		return fmt.Sprintf("dead-lettered after attempt %s: %s", Short(str("attempt_id")), str("reason"))
	case domain.EvReplayRequested:
		ids, _ := p["event_ids"].([]any)
		return fmt.Sprintf("replay of %d events to destination %s at %d/s", len(ids), str("destination_id"), num("rate_limit"))
	case domain.EvReplayReleased:
		return fmt.Sprintf("released events %d-%d", num("offset")+1, num("offset")+num("count"))
	case domain.EvReplayFailed:
		return "replay stopped: " + str("reason")
	case domain.EvSourceCreated, domain.EvSourceUpdated, domain.EvDestinationCreated, domain.EvDestinationUpdated,
		domain.EvConnectionCreated, domain.EvConnectionUpdated:
		s := fmt.Sprintf("%q", str("name"))
		if st := str("status"); st != "" {
			s += " status " + st
		}
		return s
	}
	return "-"
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// OneLine is s on one line, cut to n bytes.
func OneLine(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}
