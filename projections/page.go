package projections

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/hookstream/hookstream/internal/kit"
)

// Pagination is hookstream's offset pagination object.
type Pagination struct {
	Total   int  `json:"total"`
	Limit   int  `json:"limit"`
	Offset  int  `json:"offset"`
	HasMore bool `json:"has_more"`
}

// PageQuery runs one offset-paginated list: the total and one page.
func PageQuery[T any](ctx context.Context, pool *pgxpool.Pool, table, cols, where, order string, args []any, limit, offset int, scan func(pgx.Row) (T, error)) ([]T, Pagination, error) {
	p := Pagination{Limit: limit, Offset: offset}
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM `+table+` WHERE `+where, args...).Scan(&p.Total); err != nil {
		return nil, p, err
	}
	n := len(args)
	rows, err := pool.Query(ctx, fmt.Sprintf(`SELECT %s FROM %s WHERE %s ORDER BY %s LIMIT $%d OFFSET $%d`, cols, table, where, order, n+1, n+2),
		append(args, limit, offset)...)
	out, err := kit.CollectRows(rows, err, scan)
	if err != nil {
		return nil, p, err
	}
	p.HasMore = offset+len(out) < p.Total
	return out, p, nil
}
