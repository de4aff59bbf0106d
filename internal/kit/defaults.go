package kit

import (
	"log/slog"
	"time"

	"github.com/hookstream/hookstream/eventstore"
)

// Defaults fills what a constructor's params leave zero: the clock
// (time.Now), the logger (slog's default) and the event store (on that
// clock). A nil pointer skips that one.
func Defaults(now *func() time.Time, log **slog.Logger, store **eventstore.Store) {
	if *now == nil {
		*now = time.Now
	}
	if log != nil && *log == nil {
		*log = slog.Default()
	}
	if store != nil && *store == nil {
		*store = eventstore.New(*now)
	}
}
