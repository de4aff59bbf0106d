package redeliver

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/hookstream/hookstream/domain"
	"github.com/hookstream/hookstream/eventstore"
	"github.com/hookstream/hookstream/handlers/jobs"
	"github.com/hookstream/hookstream/internal/kit"
)

// RunReplays releases the running replays' batches as they come due, until
// ctx ends. Every batch is one transaction at the replay stream's expected
// version, so two engines never release the same batch and a restart
// resumes after the last recorded one.
func (s *Redeliverer) RunReplays(ctx context.Context) {
	ticker := time.NewTicker(s.p.ReplayPoll)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
		rows, err := s.pool.Query(ctx, `SELECT id FROM replay_jobs WHERE status = 'running' AND released < total AND next_batch_at <= $1
			ORDER BY next_batch_at`, s.now())
		ids, err := kit.CollectRows(rows, err, func(r pgx.Row) (string, error) {
			var id string
			return id, r.Scan(&id)
		})
		if err != nil {
			if ctx.Err() == nil {
				s.p.Log.Error("replay: list running", "err", err)
			}
			continue
		}
		for _, id := range ids {
			if err := s.releaseReplay(ctx, id); err != nil && !errors.Is(err, eventstore.ErrConcurrency) && ctx.Err() == nil {
				s.p.Log.Error("replay: release batch", "replay", id, "err", err)
			}
		}
	}
}

// loadReplay reads a replay's stream in tx and folds it.
func (s *Redeliverer) loadReplay(ctx context.Context, tx pgx.Tx, id string) ([]eventstore.Event, *domain.Replay, error) {
	evs, err := s.store.Load(ctx, tx, id)
	if err != nil {
		return nil, nil, err
	}
	r := &domain.Replay{}
	for _, ev := range evs {
		if err := r.Apply(ev.StreamVersion, ev.Type, ev.Payload); err != nil {
			return nil, nil, err
		}
	}
	return evs, r, nil
}

// releaseReplay hands the replay's next batch, when due, to the delivery
// pipeline: one DeliveryRequested (trigger replay) per event, due evenly
// across the second, and ReplayReleased, in one transaction.
func (s *Redeliverer) releaseReplay(ctx context.Context, id string) error {
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		evs, r, err := s.loadReplay(ctx, tx, id)
		if err != nil {
			return err
		}
		now := s.now().UTC()
		offset, batch := r.NextBatch(now)
		if len(batch) == 0 {
			return nil
		}
		req := r.Requested()
		org, env := evs[0].OrgID, evs[0].EnvID
		stream := func(d domain.Decided) eventstore.StreamAppend {
			return eventstore.StreamAppend{StreamType: domain.StreamReplay, StreamID: id, OrgID: org, EnvID: env, Expected: r.Version(),
				Events: kit.NewEvents([]domain.Decided{d}, eventstore.Metadata{Actor: "replay", CorrelationID: id})}
		}
		var destName, url, method, destStatus string
		err = tx.QueryRow(ctx, `SELECT name, url, method, status FROM destinations WHERE id = $1`, req.DestinationID).Scan(&destName, &url, &method, &destStatus)
		reason := ""
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			reason = "the destination was deleted"
		case err != nil:
			return fmt.Errorf("load destination: %w", err)
		case destStatus == "disabled":
			reason = "the destination is disabled"
		}
		if reason != "" {
			if _, err := s.store.Append(ctx, tx, stream(r.Fail(reason, now))); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, `UPDATE replay_jobs SET status = 'failed', error = $2, failed_at = $3 WHERE id = $1`, id, reason, now)
			return err
		}
		found, err := loadReceived(ctx, tx, batch)
		if err != nil {
			return err
		}
		conns, err := loadReplayConnections(ctx, tx, req)
		if err != nil {
			return err
		}
		target := replayTarget{id: id, org: org, env: env, destID: req.DestinationID, destName: destName, url: url, method: method}
		appends, newJobs, deliveryIDs := target.deliveries(batch, found, conns, req.RateLimit, now)
		released, err := r.Release(offset, len(batch), deliveryIDs, now)
		if err != nil {
			return err
		}
		if _, err := s.store.AppendMany(ctx, tx, append([]eventstore.StreamAppend{stream(released)}, appends...)...); err != nil {
			return err
		}
		if err := jobs.Insert(ctx, tx, newJobs); err != nil {
			return err
		}
		if len(newJobs) > 0 {
			if err := jobs.Notify(ctx, tx); err != nil {
				return err
			}
		}
		// Events removed by history retention since the replay listed them
		// are skipped: they count towards the replay's completion.
		_, err = tx.Exec(ctx, `UPDATE replay_jobs SET released = $2, next_batch_at = $3, skipped = skipped + $4 WHERE id = $1 AND released < $2`,
			id, offset+len(batch), now.Add(time.Second), len(batch)-len(deliveryIDs))
		return err
	})
}

type received struct{ uuid, source string }

// loadReceived reads the EventReceived id and source of each event in batch,
// FOR SHARE: a history pass (which locks them FOR UPDATE before it looks
// for scheduled deliveries) either sees this release's jobs or removed the
// event before it, and then it is missing here and left out. In position
// order, as the pass locks them (no deadlock).
func loadReceived(ctx context.Context, tx pgx.Tx, batch []string) (map[string]received, error) {
	found := map[string]received{}
	rows, err := tx.Query(ctx, `SELECT stream_id, event_id::text, payload->>'source_id' FROM events
		WHERE stream_id = ANY($1) AND event_type = $2 ORDER BY global_position FOR SHARE`, batch, domain.EvEventReceived)
	if _, err = kit.CollectRows(rows, err, func(row pgx.Row) (struct{}, error) {
		var sid string
		var rcv received
		err := row.Scan(&sid, &rcv.uuid, &rcv.source)
		found[sid] = rcv
		return struct{}{}, err
	}); err != nil {
		return nil, fmt.Errorf("load replayed events: %w", err)
	}
	return found, nil
}

type conn struct{ id, name string }

// loadReplayConnections is the connection a replay's deliveries carry, by
// source: the one it names, or each source's oldest to its destination.
func loadReplayConnections(ctx context.Context, tx pgx.Tx, req domain.ReplayRequested) (map[string]conn, error) {
	conns := map[string]conn{}
	if req.ConnectionID != "" {
		var c conn
		var src string
		if err := tx.QueryRow(ctx, `SELECT id, name, source_id FROM connections WHERE id = $1`, req.ConnectionID).Scan(&c.id, &c.name, &src); err == nil {
			conns[src] = c
		} else if !errors.Is(err, pgx.ErrNoRows) {
			return nil, fmt.Errorf("load connection: %w", err)
		}
		return conns, nil
	}
	rows, err := tx.Query(ctx, `SELECT DISTINCT ON (source_id) source_id, id, name FROM connections
		WHERE destination_id = $1 ORDER BY source_id, created_at`, req.DestinationID)
	if _, err = kit.CollectRows(rows, err, func(row pgx.Row) (struct{}, error) {
		var src string
		var c conn
		err := row.Scan(&src, &c.id, &c.name)
		conns[src] = c
		return struct{}{}, err
	}); err != nil {
		return nil, fmt.Errorf("load connections: %w", err)
	}
	return conns, nil
}

// replayTarget is where a replay's batch goes.
type replayTarget struct{ id, org, env, destID, destName, url, method string }

// deliveries are a released batch's DeliveryRequested streams and jobs, due
// evenly across the second at the replay's rate.
func (t replayTarget) deliveries(batch []string, found map[string]received, conns map[string]conn, rate int, now time.Time) (
	appends []eventstore.StreamAppend, newJobs []jobs.NewJob, deliveryIDs []string) {
	id, org, env := t.id, t.org, t.env
	spacing := time.Second / time.Duration(max(1, rate))
	for i, evID := range batch {
		rcv, ok := found[evID]
		if !ok {
			continue // removed by history retention since the replay listed it
		}
		c := conns[rcv.source]
		deliveryID, attemptID, due := kit.NewID(), kit.NewID(), now.Add(time.Duration(i)*spacing)
		deliveryIDs = append(deliveryIDs, deliveryID)
		newJobs = append(newJobs, jobs.NewJob{DeliveryID: deliveryID, OrgID: org, EnvID: env, EventID: evID, ConnectionID: c.id,
			DestinationID: t.destID, ReceivedUUID: rcv.uuid, AttemptID: attemptID, Trigger: domain.TriggerReplay, Due: due})
		appends = append(appends, eventstore.StreamAppend{
			StreamType: domain.StreamDelivery, StreamID: deliveryID, OrgID: org, EnvID: env, Expected: eventstore.NoStream,
			Events: []eventstore.NewEvent{{Type: domain.EvDeliveryRequested,
				Metadata: eventstore.Metadata{Actor: "replay", CorrelationID: evID, CausationID: id},
				Payload: domain.DeliveryRequested{
					DeliveryID: deliveryID, EventID: evID, ReceivedUUID: rcv.uuid, ConnectionID: c.id, ConnectionName: c.name,
					DestinationID: t.destID, DestinationName: t.destName, RequestURL: t.url, RequestMethod: t.method,
					AttemptID: attemptID, TriggerType: domain.TriggerReplay, RequestedAt: due, ReplayID: id,
				}}},
		})
	}
	return appends, newJobs, deliveryIDs
}
