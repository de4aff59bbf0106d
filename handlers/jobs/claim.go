package jobs

// ClaimSQL leases due jobs, walking the destinations that have scheduled
// jobs (a skip scan of delivery_jobs_claim_idx: one index seek each, however
// many jobs a destination holds, due or not) and taking from each at most
// its free capacity ($3/$4: destinations and what they can still take; any
// other destination takes $5), oldest due first, $2 in all, none of the
// tenants in $10 (at their share of the lanes). Paused
// destinations and open circuits are skipped once, at the destination, not
// job by job, by a probe of that destination's own rows (PerRow): as hashed
// subplans, PostgreSQL's choice, every claim read all paused destinations
// (a scan of the whole table) and all open circuits of every tenant. $6,
// when set, claims only those jobs (half-open circuits' probes). A lease runs $8 (the lease TTL) from the claim, and the worker's
// heartbeat (HeartbeatSQL) extends it while the job is held: a job whose
// lease expired (its worker died) is claimable again soon, under the same
// attempt id. Only the lease columns change, which no index
// holds, so the row is rewritten in place.
//
// The destination probes test version (always > 0), a column the index
// does not hold: that makes them plain index scans, which mark the entries
// of jobs that finished (dead rows, until vacuum) as dead in the index the
// first time they meet them. An index-only scan cannot, and visited the heap
// for every such entry on every claim (34-146 heap fetches per claim in a
// saturated run, growing with the backlog of finished jobs).
//
// The claim commits without waiting for its WAL flush (its caller runs it
// in kit.SendTx with durable false: synchronous_commit off, local to its
// transaction, and the generic plan): a lease is visible to every other claim at
// once, and is only lost if PostgreSQL itself crashes within the flush
// delay, when the job is claimed again after the restart and sent again
// with the same attempt id and Idempotency-Key: the at-least-once any crash
// gives. Measured: the claim's commit was the dispatcher's largest wait.
var ClaimSQL = `
WITH RECURSIVE dests AS (
    (SELECT j.destination_id FROM delivery_jobs j WHERE j.state = 'scheduled' AND j.version > 0 ORDER BY j.destination_id LIMIT 1)
  UNION ALL
    SELECT (SELECT j.destination_id FROM delivery_jobs j
            WHERE j.state = 'scheduled' AND j.version > 0 AND j.destination_id > dests.destination_id
            ORDER BY j.destination_id LIMIT 1)
    FROM dests WHERE dests.destination_id IS NOT NULL
), open AS (
    SELECT d.destination_id,
           coalesce((SELECT c.n FROM unnest($3::text[], $4::int[]) AS c(dest, n) WHERE c.dest = d.destination_id), $5::int) AS room
    FROM dests d
    WHERE d.destination_id IS NOT NULL
      AND NOT ` + PerRow(PausedDestination("d.destination_id")) + `
      -- Tenants ("org/env") already holding their share of the lanes: their
      -- jobs wait, other tenants' go out.
      AND NOT ` + PerRow(`EXISTS (SELECT 1 FROM destinations t WHERE t.id = d.destination_id AND t.org_id || '/' || t.env_id = ANY($10::text[]))`) + `
      AND ($6::text[] IS NOT NULL
           OR NOT ` + PerRow(`EXISTS (SELECT 1 FROM destination_circuits k WHERE k.destination_id = d.destination_id AND k.state <> 'closed')`) + `)
    -- Round robin: start after the destination the last claim served last.
    ORDER BY d.destination_id <= $9, d.destination_id
), c AS (
    SELECT p.delivery_id, p.destination_id FROM open o
    CROSS JOIN LATERAL (
        SELECT j.delivery_id, j.destination_id FROM delivery_jobs j
        WHERE j.destination_id = o.destination_id AND j.state = 'scheduled' AND j.due_at <= $1
          AND (j.lease_until IS NULL OR j.lease_until < $1)
          AND NOT ` + PausedRoute("j.connection_id") + `
          AND ($6::text[] IS NULL OR j.delivery_id = ANY($6))
        ORDER BY j.due_at
        LIMIT o.room
        FOR UPDATE OF j SKIP LOCKED) p
    WHERE o.room > 0
    LIMIT $2
), u AS (
    UPDATE delivery_jobs j
    SET lease_until = $1 + $8::interval, leased_by = $7
    FROM c
    WHERE j.delivery_id = c.delivery_id
    RETURNING j.delivery_id, j.org_id, j.env_id, j.event_id, j.destination_id, j.attempt_id, j.attempt_number, j.version, j.received_uuid, j.due_at,
        j.trigger_type, j.auto_retries, j.last_number, j.reopened
)
` + claimedSelect + `
ORDER BY u.destination_id, u.due_at`

// claimedSelect reads what a lane needs of each job in u (leased jobs, with
// the job columns ClaimSQL's u returns): the webhook's body, the
// destination's configuration. ClaimSQL and InsertTakeSQL end with it, so a
// job handed over at ingest is read exactly like a claimed one.
const claimedSelect = `SELECT u.delivery_id, u.org_id, u.env_id, u.event_id, u.destination_id, u.attempt_id, u.attempt_number, u.version,
       ` + claimedBody + `,
       d.id IS NOT NULL, coalesce(d.url, ''), coalesce(d.method, 'POST'), coalesce(d.headers, '{}'), coalesce(d.timeout_ms, 30000),
       coalesce(d.retry_enabled, false), coalesce(d.retry_max_attempts, 0), coalesce(d.retry_backoff_type, 'exponential'),
       coalesce(d.retry_intervals, '[30]'), coalesce(d.status, ''), coalesce(d.disabled_reason, ''), d.signing_config,
       coalesce(d.signing_previous_expires_at > $1, false), coalesce(d.secrets, ''),
       u.trigger_type, u.due_at, u.auto_retries, u.last_number, u.reopened, coalesce(d.circuit_breaker_enabled, true), d.updated_at
FROM u` + claimedWebhook + `
LEFT JOIN destinations d ON d.id = u.destination_id`

// claimedBody and claimedWebhook are claimedSelect's webhook: its body and
// content type, from the EventReceived that holds it.
const (
	claimedBody    = `coalesce(e.payload->>'body_b64', '` + ExpiredBody + `'), coalesce(e.payload->>'content_type', '')`
	claimedWebhook = ` CROSS JOIN LATERAL (SELECT x.payload FROM events x WHERE x.event_id = u.received_uuid) e`
)

// ExpiredBody is the body a claim reads for a webhook whose payload expired
// (retention removed body_b64): not base64, so it is never sent. Retention
// keeps the payloads of scheduled deliveries; this covers a retry racing it.
const ExpiredBody = "!expired"

// The pause rule, the one place it is written (the claim and the circuit's
// probe pick use it): a job is held while its destination is paused, or its
// connection or that connection's source is. Held jobs are not claimed and
// spend no attempt; they go out in due order once all are active again.

// PausedDestination is true when the destination in destCol is paused.
func PausedDestination(destCol string) string {
	return `EXISTS (SELECT 1 FROM destinations x WHERE x.id = ` + destCol + ` AND x.status = 'paused')`
}

// PausedRoute is true when the connection in connCol, or its source, is paused.
func PausedRoute(connCol string) string {
	return `EXISTS (SELECT 1 FROM connections cn JOIN sources s ON s.id = cn.source_id
		WHERE cn.id = ` + connCol + ` AND (cn.status = 'paused' OR s.status = 'paused'))`
}

// HeartbeatSQL extends the leases worker $2 still holds ($1) to $3. Like the
// claim, it does not wait for its WAL flush.
const HeartbeatSQL = `UPDATE delivery_jobs j SET lease_until = $3
	FROM (SELECT set_config('synchronous_commit', 'off', true)) AS async
	WHERE j.delivery_id = ANY($1) AND j.leased_by = $2 AND j.state = 'scheduled'`
