package delivery

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptrace"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/hookstream/hookstream/domain"
	"github.com/hookstream/hookstream/handlers/jobs"
	"github.com/hookstream/hookstream/internal/kit"
)

// errAborted marks a request cut off by shutdown: it is not recorded.
const errAborted = "aborted by shutdown"

// ResponseBodyLimit is how much of a destination's response body an attempt records.
const ResponseBodyLimit = 10 * 1024

// handleBatch is the delivery handler: HTTP calls with no transaction open,
// then one short transaction records every outcome. A retry due at once
// (a policy with no wait) goes out from here, in the same lane, once its
// failure is recorded and the destination has room (retake): its job kept
// its lease, and no claim re-reads it.
func (e *Engine) handleBatch(msg *message.Message) error {
	held, ok := e.batches.LoadAndDelete(msg.UUID)
	if !ok {
		return nil // handled before (a redelivered message): nothing left to do
	}
	batch := held.([]dispatchJob)
	defer e.release(append([]dispatchJob(nil), batch...)) // recorded, or left to expire
	lane, _ := strconv.Atoi(msg.Metadata.Get("lane"))
	// Chained attempts are deliveries of this batch: they stay within its
	// requests and lane.
	run := &laneRun{dest: msg.Metadata.Get("destination_id"), tenant: tenantOf(batch[0]), lane: lane, requests: len(batch), batches: 1}
	defer func() { e.finished(run.dest, run.tenant, run.requests, run.batches, run.lane) }()
	// Recording must outlive a shutdown signal: the requests were made.
	ctx := context.WithoutCancel(msg.Context())
	for len(batch) > 0 {
		batch = e.sendAndRecord(ctx, batch, run)
	}
	return nil
}

// laneRun is what a lane's batch holds of its destination's room (requests,
// batches) and the lane itself, until the batch finishes.
type laneRun struct {
	dest, tenant      string
	lane              int
	requests, batches int
}

// released reports whether the room went back (sent): the batch then
// chains nothing more unless it takes the room again (retake), since a
// chained attempt must hold it.
func (r *laneRun) released() bool { return r.batches == 0 }

// sent gives the destination's room back once the batch's requests are
// done: recording them needs the lane, not the room.
func (r *laneRun) sent(e *Engine) {
	if r.requests > 0 || r.batches > 0 {
		e.finished(r.dest, r.tenant, r.requests, r.batches, -1)
		r.requests, r.batches = 0, 0
	}
}

// sendAndRecord sends a batch and records its outcomes; it returns the
// attempts to send next at once (retries due now whose jobs kept their
// leases), none while the engine shuts down.
func (e *Engine) sendAndRecord(ctx context.Context, batch []dispatchJob, run *laneRun) []dispatchJob {
	results := e.sendInOrder(batch)
	if e.sends.Err() != nil {
		// Shut down past the grace period: requests cut off are not attempts.
		// Their leases are released at shutdown and they run again.
		kept := 0
		for i := range batch {
			if results[i].Error != nil && *results[i].Error == errAborted {
				continue
			}
			batch[kept], results[kept] = batch[i], results[i]
			kept++
		}
		batch, results = batch[:kept], results[:kept]
		if kept == 0 {
			return nil
		}
	}
	for try := 0; ; try++ {
		next, err := e.complete(ctx, batch, results, !e.draining.Load() && e.sends.Err() == nil, run)
		if err == nil {
			e.recorded(ctx, batch, results, len(next))
			e.p.Metrics.Dispatched("chain", len(next))
			return next
		}
		if try == 4 {
			e.p.Log.Error("record attempts failed; leases will expire and the deliveries run again", "err", err, "deliveries", len(batch))
			return nil
		}
		time.Sleep(time.Duration(100*(try+1)) * time.Millisecond)
	}
}

// sendInOrder sends a batch, which is in due order: each request starts once
// the one before it has been written, so a backlog (after a pause or an open
// circuit) leaves in order while the requests still overlap.
func (e *Engine) sendInOrder(batch []dispatchJob) []domain.DeliveryAttempted {
	results := make([]domain.DeliveryAttempted, len(batch))
	if len(batch) == 1 { // nothing to order: no goroutine, no trace
		results[0] = e.sendRecovered(e.sends, batch[0])
		return results
	}
	var wg sync.WaitGroup
	prev := make(chan struct{})
	close(prev)
	for i := range batch {
		wg.Add(1)
		written := make(chan struct{})
		go func(prev <-chan struct{}) {
			defer wg.Done()
			var once sync.Once
			signal := func() { once.Do(func() { close(written) }) }
			defer signal()
			<-prev
			trace := &httptrace.ClientTrace{WroteRequest: func(httptrace.WroteRequestInfo) { signal() }}
			results[i] = e.sendRecovered(httptrace.WithClientTrace(e.sends, trace), batch[i])
		}(prev)
		prev = written
	}
	wg.Wait()
	return results
}

// recorded follows a batch's recording: wakes the projector (and the
// dispatcher when a retry not chained may be due at once), tells the API a
// destination went away, counts and logs each attempt.
func (e *Engine) recorded(ctx context.Context, batch []dispatchJob, results []domain.DeliveryAttempted, chained int) {
	if anyManual(batch) {
		e.projector.Hurry() // its API call waits for the projected attempt
	} else {
		e.projector.Wake()
	}
	if failed(results) > chained {
		e.poke()
	}
	if e.p.ConfigChanged != nil && anyGone(results) {
		e.p.ConfigChanged()
	}
	for i, r := range results {
		e.p.Metrics.RecordAttempt(batch[i].DestinationID, r)
		attrs := []slog.Attr{slog.String("delivery_id", batch[i].DeliveryID), slog.String("attempt_id", r.AttemptID),
			slog.String("destination_id", batch[i].DestinationID), slog.Int("attempt", batch[i].AttemptNumber),
			slog.String("status", r.Status), slog.Int("duration_ms", r.DurationMS)}
		if r.ResponseStatus != nil {
			attrs = append(attrs, slog.Int("http_status", *r.ResponseStatus))
		}
		if r.Error != nil {
			attrs = append(attrs, slog.String("error", *r.Error))
		}
		e.p.Log.LogAttrs(ctx, slog.LevelInfo, "attempt", attrs...)
	}
}

// sendRecovered is send that turns a panic into a failed attempt (logged
// once), so one bad job cannot take down the lane, the engine or the API.
func (e *Engine) sendRecovered(ctx context.Context, j dispatchJob) (res domain.DeliveryAttempted) {
	defer func() {
		if v := recover(); v != nil {
			e.p.Log.Error("delivery attempt panicked", "delivery_id", j.DeliveryID, "attempt_id", j.AttemptID, "panic", fmt.Sprint(v))
			msg := "internal error while sending"
			res = domain.DeliveryAttempted{AttemptID: j.AttemptID, RequestURL: j.URL, RequestMethod: j.Method,
				StartedAt: e.p.Now().UTC(), Status: domain.AttemptFailed, Error: &msg, ErrorType: "network"}
		}
	}()
	return e.send(ctx, j)
}

// send makes one HTTP attempt and describes it.
func (e *Engine) send(ctx context.Context, j dispatchJob) domain.DeliveryAttempted {
	started := e.p.Now().UTC()
	res := domain.DeliveryAttempted{AttemptID: j.AttemptID, RequestURL: j.URL, RequestMethod: j.Method, StartedAt: started, Status: domain.AttemptFailed}
	fail := func(msg string) domain.DeliveryAttempted {
		msg = storableText([]byte(msg)) // an error may quote what the destination sent
		res.Error = &msg
		res.DurationMS = int(e.p.Now().Sub(started).Milliseconds())
		return res
	}
	if !j.DestFound {
		return fail("destination was deleted")
	}
	if j.DestStatus == "disabled" {
		res.Final = "destination is disabled: " + kit.OrDefault(j.DisabledWhy, "by its owner")
		return fail(res.Final)
	}
	if j.Unsendable != "" {
		return fail(j.Unsendable)
	}
	if j.BodyB64 == jobs.ExpiredBody {
		res.Final = "the webhook's payload expired (retention) before it was sent"
		return fail(res.Final)
	}
	body, err := base64.StdEncoding.DecodeString(j.BodyB64)
	if err != nil {
		return fail("stored payload is unreadable")
	}
	res.RequestBodySize = len(body)
	reqCtx, cancel := context.WithTimeout(ctx, time.Duration(j.TimeoutMS)*time.Millisecond)
	defer cancel()
	req, err := newRequest(reqCtx, j, body, started)
	if err != nil {
		return fail("invalid request URL")
	}
	sent, err := json.Marshal(flatten(redactSent(req.Header, j.Headers, j.Signing)))
	if err != nil {
		return fail("request headers cannot be recorded")
	}
	res.RequestHeaders = string(sent)

	resp, err := e.client.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return fail(errAborted)
		}
		msg, class := classifyError(err, reqCtx.Err() == context.DeadlineExceeded, j.TimeoutMS)
		res.ErrorType = class
		return fail(msg)
	}
	defer resp.Body.Close()
	return e.recordResponse(res, resp, started)
}

// newRequest is a job's request: its destination's headers, the event's
// content type, hookstream's headers and the signature.
func newRequest(ctx context.Context, j dispatchJob, body []byte, started time.Time) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, j.Method, j.SendURL, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	for k, v := range j.Headers {
		req.Header.Set(k, v)
	}
	if j.ContentType != "" {
		req.Header.Set("Content-Type", j.ContentType)
	}
	req.Header.Set("User-Agent", "hookstream/1.0")
	req.Header.Set("X-hookstream-Event-Id", j.EventID)
	req.Header.Set("X-hookstream-Delivery-Id", j.DeliveryID)
	req.Header.Set("X-hookstream-Delivery-Attempt", strconv.Itoa(j.AttemptNumber))
	req.Header.Set("X-hookstream-Timestamp", started.Format(time.RFC3339))
	req.Header.Set("Idempotency-Key", j.DeliveryID)
	j.Signing.Sign(req.Header, j.DeliveryID, body, j.PrevSecret, started)
	return req, nil
}

// recordResponse completes res from a destination's answer: status, headers
// and body (bounded), and, on a failure, its class and Retry-After.
func (e *Engine) recordResponse(res domain.DeliveryAttempted, resp *http.Response, started time.Time) domain.DeliveryAttempted {
	// A body cut short by the destination is recorded as far as it came.
	limited, _ := io.ReadAll(io.LimitReader(resp.Body, ResponseBodyLimit))
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20)) // drain so the connection is reused
	res.DurationMS = int(e.p.Now().Sub(started).Milliseconds())
	status := resp.StatusCode
	res.ResponseStatus = &status
	rhs, rb := recordHeaders(resp.Header, ResponseHeadersLimit), storableText(limited)
	res.ResponseHeaders, res.ResponseBody = &rhs, &rb
	if status >= 200 && status < 300 {
		res.Status = domain.AttemptSuccess
		return res
	}
	msg := fmt.Sprintf("HTTP %d", status)
	res.Error = &msg
	res.ErrorType = domain.ErrorClass(res)
	res.RetryAfterMS = retryAfter(status, resp.Header, e.p.Now())
	if status == http.StatusGone {
		res.Final = "destination answered 410 Gone; the destination was disabled"
	}
	return res
}

// ResponseHeadersLimit is how much of a destination's response headers an
// attempt records (the JSON-encoded object); the rest is cut, like the body.
const ResponseHeadersLimit = 64 * 1024

// headersTruncated is the entry that says how many headers were left out.
const headersTruncated = "X-Hookstream-Headers-Truncated"

// storableText is a destination's bytes as text the log can hold: a NUL
// (which encoding/json writes as \u0000, and jsonb refuses) becomes U+FFFD,
// as invalid UTF-8 does when the event is encoded. Kept as it came, one
// NUL in a response body made its attempt impossible to record: the
// delivery was sent again, forever.
func storableText(b []byte) string {
	if bytes.IndexByte(b, 0) < 0 {
		return string(b)
	}
	return strings.ReplaceAll(string(b), "\x00", "\uFFFD")
}

// recordHeaders is h as an attempt records it: a JSON object of at most
// limit bytes, headers in name order, a value cut where the limit falls, and
// an entry naming how many headers were left out.
func recordHeaders(h http.Header, limit int) string {
	flat := flatten(h)
	names := make([]string, 0, len(flat))
	for k := range flat {
		names = append(names, k)
	}
	sort.Strings(names)
	out := make(map[string]string, len(flat))
	budget := limit - 64 // room for the truncation entry and the braces
	omitted, cut := 0, false
	for _, k := range names {
		v := flat[k]
		cost := len(k) + len(v) + 8 // quotes, colon, comma
		if budget <= 0 || len(k) > budget {
			omitted++
			continue
		}
		if cost > budget {
			v = strings.ToValidUTF8(v[:max(0, budget-len(k)-8)], "")
			cost, cut = len(k)+len(v)+8, true
		}
		out[k] = v
		budget -= cost
	}
	if omitted > 0 || cut {
		out[headersTruncated] = strconv.Itoa(omitted)
	}
	raw, err := json.Marshal(out)
	if err != nil || len(raw) > limit {
		// JSON escaping (control characters, <, >) can grow the text; keep the
		// record within its bound rather than exact.
		return fmt.Sprintf(`{%q:%q}`, headersTruncated, strconv.Itoa(len(flat)))
	}
	return string(raw)
}

// failed counts the failed attempts.
func failed(results []domain.DeliveryAttempted) int {
	n := 0
	for _, r := range results {
		if r.Status != domain.AttemptSuccess {
			n++
		}
	}
	return n
}

// anyGone reports whether a destination answered 410 Gone (and so was disabled).
func anyGone(results []domain.DeliveryAttempted) bool {
	for _, r := range results {
		if r.ResponseStatus != nil && *r.ResponseStatus == http.StatusGone {
			return true
		}
	}
	return false
}

func flatten(h http.Header) map[string]string {
	out := make(map[string]string, len(h))
	for k, v := range h {
		out[k] = strings.Join(v, ", ")
	}
	return out
}
