package api

import (
	"encoding/json"
	"net/http"
	"sync"
	"time"

	"github.com/gorilla/mux"

	"github.com/hookstream/hookstream/domain"
	"github.com/hookstream/hookstream/projections"
)

// The live tail's bounds: how many streams the process and one environment
// hold open, how often a stream reads the log, how long a browser may take
// to accept a write before it is cut off, and how long one stream lives
// (EventSource reconnects on its own with Last-Event-ID, and is
// authenticated again: an ended session stops streaming within TailLifetime).
const (
	TailMaxStreams    = 256
	TailMaxPerEnv     = 8
	TailPoll          = 500 * time.Millisecond
	TailWriteDeadline = 10 * time.Second
	TailKeepAlive     = 15 * time.Second
	TailLifetime      = 10 * time.Minute
	// TailMaxResume is how many transactions behind the log's horizon a
	// Last-Event-ID may resume from: an older (or forged) cursor would make
	// the first read walk that much of every tenant's log, so the stream
	// starts from now instead (the events list has the rest).
	TailMaxResume = 10000
	tailBatch     = 100
)

// tailSlots counts the open live-tail streams, in total and per environment.
type tailSlots struct {
	mu    sync.Mutex
	total int
	env   map[string]int
}

func (s *tailSlots) take(env string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.total >= TailMaxStreams || s.env[env] >= TailMaxPerEnv {
		return false
	}
	if s.env == nil {
		s.env = map[string]int{}
	}
	s.total++
	s.env[env]++
	return true
}

func (s *tailSlots) give(env string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.total--
	if s.env[env]--; s.env[env] <= 0 {
		delete(s.env, env)
	}
}

func (a *API) registerTailRoutes(r *mux.Router) {
	r.HandleFunc("/events/tail", a.withAuth(a.tail)).Methods(http.MethodGet)
}

// tail streams the environment's new webhooks as Server-Sent Events, in
// commit order, read from the log. Back-pressure: a stream reads the next
// batch only once the previous one was written, so nothing queues for a
// slow browser, and one that does not take a write within
// TailWriteDeadline is disconnected.
func (a *API) tail(w http.ResponseWriter, r *http.Request) {
	t := tenantOf(r)
	if err := knownQuery(r.URL.Query()); err != nil {
		writeError(w, r, a.p.Log, err)
		return
	}
	reads := a.p.Service.Reads
	cur, err := reads.TailStart(r.Context())
	if err != nil {
		writeError(w, r, a.p.Log, err)
		return
	}
	if last := r.Header.Get("Last-Event-ID"); last != "" {
		c, ok := projections.ParseTailCursor(last)
		if !ok {
			writeError(w, r, a.p.Log, domain.Errorf(domain.EInvalid, "Invalid Last-Event-ID: want the id of an event this stream sent"))
			return
		}
		if c.Tx <= cur.Tx && c.Tx+TailMaxResume >= cur.Tx {
			cur = c // else too old, or ahead of the log: from now
		}
	}
	if !a.tails.take(t.EnvID) {
		w.Header().Set("Retry-After", "30")
		writeError(w, r, a.p.Log, domain.Errorf(domain.ERateLimited, "Too many live tails open: at most %d per environment", TailMaxPerEnv))
		return
	}
	defer a.tails.give(t.EnvID)

	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no") // proxies: do not buffer the stream
	w.WriteHeader(http.StatusOK)
	write := func(b []byte) bool {
		if rc.SetWriteDeadline(time.Now().Add(TailWriteDeadline)) != nil {
			return false // no deadline, no stream: a stuck browser would hold it forever
		}
		if _, err := w.Write(b); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	// The first line tells the browser the stream is open, and how long to
	// wait before reconnecting.
	if !write([]byte("retry: 2000\n: open\n\n")) {
		return
	}
	ctx := r.Context()
	end := time.Now().Add(TailLifetime)
	lastWrite := time.Now()
	tick := time.NewTicker(TailPoll)
	defer tick.Stop()
	var buf []byte
	for time.Now().Before(end) {
		evs, next, err := reads.TailEvents(ctx, t, cur, tailBatch)
		if err != nil {
			if ctx.Err() == nil {
				a.p.Log.Warn("live tail read failed; the stream ends and the browser reconnects", "err", err)
			}
			return
		}
		cur = next
		if len(evs) > 0 {
			buf = buf[:0]
			for _, ev := range evs {
				data, err := json.Marshal(ev)
				if err != nil {
					return
				}
				buf = append(buf, "id: "+ev.Cursor+"\nevent: event\ndata: "...)
				buf = append(buf, data...)
				buf = append(buf, "\n\n"...)
			}
			if !write(buf) {
				return
			}
			lastWrite = time.Now()
			if len(evs) == tailBatch {
				continue // more is waiting: read on at once
			}
		} else if time.Since(lastWrite) >= TailKeepAlive {
			// An id without data moves the browser's Last-Event-ID to the
			// horizon: a reconnect resumes from there, not from its last event.
			if !write([]byte("id: " + cur.String() + "\n\n")) {
				return
			}
			lastWrite = time.Now()
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}
