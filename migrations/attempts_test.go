package migrations_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/hookstream/hookstream/domain"
	"github.com/hookstream/hookstream/internal/pgtest"
	"github.com/hookstream/hookstream/migrations"
	"github.com/hookstream/hookstream/projections"
)

// Migration 0024 drops delivery_attempts' copies of each attempt's headers
// and body and points every attempt made at the DeliveryAttempted that
// holds them (the last one naming it, in its delivery's stream); a pending
// attempt points nowhere. The API then shows what the copies showed.
func TestAttemptsReadTheLogMigrationPointsAttemptsAtTheirEvents(t *testing.T) {
	ctx := context.Background()
	pool := pgtest.NewPool(t)
	// The schema as it was before 0024, with attempts projected then.
	for _, q := range []string{
		`ALTER TABLE delivery_attempts ADD COLUMN request_headers text, ADD COLUMN response_headers text, ADD COLUMN response_body text`,
		`ALTER TABLE delivery_attempts DROP COLUMN attempted_pos`,
		`DELETE FROM schema_migrations WHERE version = 24`,
	} {
		if _, err := pool.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	const delivery, other = "d0000000000000000000000000000001", "d0000000000000000000000000000002"
	const a1ID, a2ID, a3ID = "a0000000000000000000000000000001", "a0000000000000000000000000000002", "a0000000000000000000000000000003"
	attempted := func(stream string, version int, attempt, body string) int64 {
		t.Helper()
		var pos int64
		if err := pool.QueryRow(ctx, `INSERT INTO events (event_id, stream_type, stream_id, stream_version, event_type, payload, org_id, env_id)
			VALUES (gen_random_uuid(), 'delivery', $1, $2, 'DeliveryAttempted', jsonb_build_object('attempt_id', $3::text,
				'request_headers', '{"X-Try":"' || $2::bigint::text || '"}', 'response_headers', '{"Date":"x"}', 'response_body', $4::text), 'o', 'e')
			RETURNING global_position`, stream, version, attempt, body).Scan(&pos); err != nil {
			t.Fatal(err)
		}
		return pos
	}
	attempted(delivery, 2, a1ID, "first record")
	a1 := attempted(delivery, 3, a1ID, "recorded again") // the later recording is the one projected
	a2 := attempted(delivery, 5, a2ID, "second attempt")
	attempted(other, 2, a1ID, "another delivery's attempt of the same id")
	for _, a := range []struct{ id, status, headers string }{{a1ID, "failed", `{"X-Try":"3"}`}, {a2ID, "success", `{"X-Try":"5"}`}, {a3ID, "pending", ""}} {
		if _, err := pool.Exec(ctx, `INSERT INTO delivery_attempts (id, org_id, env_id, delivery_id, event_id, connection_id, destination_id,
				request_url, request_method, status, created_at, request_headers)
			VALUES ($1, 'o', 'e', $2, 'ev', 'c', 'd', 'https://example.com', 'POST', $3, now(), NULLIF($4, ''))`, a.id, delivery, a.status, a.headers); err != nil {
			t.Fatal(err)
		}
	}

	applied, err := migrations.Apply(ctx, pool)
	if err != nil || len(applied) != 1 {
		t.Fatalf("applying 0024: %v %v", applied, err)
	}
	want := map[string]*int64{a1ID: &a1, a2ID: &a2, a3ID: nil}
	for id, w := range want {
		var got *int64
		if err := pool.QueryRow(ctx, `SELECT attempted_pos FROM delivery_attempts WHERE id = $1`, id).Scan(&got); err != nil {
			t.Fatal(err)
		}
		if (got == nil) != (w == nil) || got != nil && *got != *w {
			t.Errorf("%s: attempted_pos %s, want %s", id, show(got), show(w))
		}
	}
	var copies int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM information_schema.columns WHERE table_name = 'delivery_attempts'
		AND column_name IN ('request_headers', 'response_headers', 'response_body')`).Scan(&copies); err != nil || copies != 0 {
		t.Fatalf("%d copy columns left (%v)", copies, err)
	}
	reads := projections.NewReads(pool)
	tenant := domain.Tenant{OrgID: "o", EnvID: "e"}
	got, err := reads.GetAttempt(ctx, tenant, a1ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.RequestHeaders == nil || *got.RequestHeaders != `{"X-Try":"3"}` || got.ResponseBody == nil || *got.ResponseBody != "recorded again" ||
		got.ResponseHeaders == nil || *got.ResponseHeaders != `{"Date":"x"}` {
		t.Errorf("a1 reads %s %s %s", show(got.RequestHeaders), show(got.ResponseHeaders), show(got.ResponseBody))
	}
	if got, err = reads.GetAttempt(ctx, tenant, a3ID); err != nil || got.RequestHeaders != nil || got.ResponseHeaders != nil || got.ResponseBody != nil {
		t.Errorf("pending a3 reads %s %s %s (%v)", show(got.RequestHeaders), show(got.ResponseHeaders), show(got.ResponseBody), err)
	}
}

func show[T any](p *T) string {
	if p == nil {
		return "null"
	}
	return fmt.Sprint(*p)
}
