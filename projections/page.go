package projections

import (
	"context"
	"encoding/base64"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/hookstream/hookstream/domain"
	"github.com/hookstream/hookstream/internal/kit"
)

// Pagination is hookstream's pagination object: offset paging, and on the
// events and delivery attempts lists keyset cursors as well.
type Pagination struct {
	// Total counts the rows matching the filters; null on a page read by
	// cursor (counting would cost every page the whole list) and for a
	// search, which reads no further than its page.
	Total   *int `json:"total"`
	Limit   int  `json:"limit"`
	Offset  int  `json:"offset"`
	HasMore bool `json:"has_more"`
	// NextCursor reads the next (older) page, PrevCursor the previous
	// (newer) one, with ?cursor=…&direction=next|prev; absent when there
	// is no such page (or the list has no cursors).
	NextCursor *string `json:"next_cursor,omitempty"`
	PrevCursor *string `json:"prev_cursor,omitempty"`
}

// PageQuery runs one offset-paginated list: the total and one page.
func PageQuery[T any](ctx context.Context, pool *pgxpool.Pool, table, cols, where, order string, args []any, limit, offset int, scan func(pgx.Row) (T, error)) ([]T, Pagination, error) {
	p := Pagination{Limit: limit, Offset: offset, Total: new(int)}
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM `+table+` WHERE `+where, args...).Scan(p.Total); err != nil {
		return nil, p, err
	}
	n := len(args)
	rows, err := pool.Query(ctx, fmt.Sprintf(`SELECT %s FROM %s WHERE %s ORDER BY %s LIMIT $%d OFFSET $%d`, cols, table, where, order, n+1, n+2),
		append(args, limit, offset)...)
	out, err := kit.CollectRows(rows, err, scan)
	if err != nil {
		return nil, p, err
	}
	p.HasMore = offset+len(out) < *p.Total
	return out, p, nil
}

// Cursor is a position in a newest-first list: the time and id of a row.
type Cursor struct {
	At time.Time
	ID string
}

// Encode is the cursor as the API shows it: opaque, URL-safe, and bound to
// its list (kind), so one list's cursor is refused by another.
func (c Cursor) Encode(kind string) *string {
	s := base64.RawURLEncoding.EncodeToString([]byte(fmt.Sprintf("%s:%d:%s", kind, c.At.UnixMicro(), c.ID)))
	return &s
}

// DecodeCursor reads a cursor Encode(kind) made; EInvalid for anything else.
func DecodeCursor(kind, s string) (Cursor, error) {
	bad := domain.Errorf(domain.EInvalid, "Invalid query: 'cursor' is not a cursor this list returned")
	raw, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || len(s) > 200 {
		return Cursor{}, bad
	}
	parts := strings.SplitN(string(raw), ":", 3)
	if len(parts) != 3 || parts[0] != kind || !kit.ValidID(parts[2]) {
		return Cursor{}, bad
	}
	us, err := strconv.ParseInt(parts[1], 10, 64)
	if err != nil {
		return Cursor{}, bad
	}
	return Cursor{At: time.UnixMicro(us).UTC(), ID: parts[2]}, nil
}

// List is a newest-first list read by offset or by keyset cursor.
type List struct {
	Kind           string // the cursors' kind
	Table, Cols    string
	Where          string // the filters, over Args
	TimeCol, IDCol string // the order: TimeCol DESC, IDCol DESC (an index holds it)
	Args           []any
	Limit, Offset  int
	// Cursor, when set, reads from there instead of Offset: the rows older
	// than it, or with Prev the rows newer than it.
	Cursor *Cursor
	Prev   bool
	// Counted, when set, names the list_counts list that holds the total of
	// an unfiltered list (Args[0], Args[1] are its org and environment), so
	// its first page does not count every row.
	Counted string
}

// ListPage reads one page of l: the rows, and the pagination with the
// total and the cursors around the page. scan returns a row and its position.
func ListPage[T any](ctx context.Context, pool *pgxpool.Pool, l List, scan func(pgx.Row) (T, Cursor, error)) ([]T, Pagination, error) {
	p := Pagination{Limit: l.Limit, Offset: l.Offset}
	if l.Cursor == nil {
		// Counted on offset pages only: a walk by cursor would pay the
		// whole list's count on every page.
		p.Total = new(int)
		q, args := `SELECT count(*) FROM `+l.Table+` WHERE `+l.Where, l.Args
		if l.Counted != "" {
			q, args = `SELECT coalesce((SELECT n FROM list_counts WHERE org_id = $1 AND env_id = $2 AND list = $3), 0)`, []any{l.Args[0], l.Args[1], l.Counted}
		}
		if err := pool.QueryRow(ctx, q, args...).Scan(p.Total); err != nil {
			return nil, p, err
		}
	}
	args, where, order, offset := l.Args, l.Where, l.TimeCol+" DESC, "+l.IDCol+" DESC", l.Offset
	if l.Cursor != nil {
		n := len(args)
		args = append(append([]any(nil), args...), l.Cursor.At, l.Cursor.ID)
		op := "<"
		if l.Prev {
			op, order = ">", l.TimeCol+" ASC, "+l.IDCol+" ASC"
		}
		where = fmt.Sprintf("(%s) AND (%s, %s) %s ($%d::timestamptz, $%d::text)", where, l.TimeCol, l.IDCol, op, n+1, n+2)
		offset, p.Offset = 0, 0
	}
	n := len(args)
	type keyed struct {
		item T
		at   Cursor
	}
	// The page is picked first, its columns computed after: a column that
	// looks something up (an attempt's headers and body, in the log) is then
	// read for the page's rows only, not for every row an offset skips.
	rows, err := pool.Query(ctx, fmt.Sprintf(`SELECT %s FROM (SELECT * FROM %s WHERE %s ORDER BY %s LIMIT $%d OFFSET $%d) AS %s ORDER BY %s`,
		l.Cols, l.Table, where, order, n+1, n+2, l.Table, order),
		append(args, l.Limit+1, offset)...)
	got, err := kit.CollectRows(rows, err, func(r pgx.Row) (keyed, error) {
		item, at, err := scan(r)
		return keyed{item, at}, err
	})
	if err != nil {
		return nil, p, err
	}
	p.HasMore = len(got) > l.Limit
	got = got[:min(len(got), l.Limit)]
	if l.Prev {
		slices.Reverse(got)
	}
	out := make([]T, len(got))
	for i, k := range got {
		out[i] = k.item
	}
	if len(got) > 0 {
		first, last := got[0].at, got[len(got)-1].at
		older := p.HasMore // rows past the page's oldest
		newer := l.Offset > 0 && l.Cursor == nil || l.Cursor != nil && !l.Prev
		if l.Prev {
			older, newer = true, p.HasMore
		}
		if older {
			p.NextCursor = last.Encode(l.Kind)
		}
		if newer {
			p.PrevCursor = first.Encode(l.Kind)
		}
	}
	return out, p, nil
}
