package retention

import (
	"testing"
	"time"
)

// A pass rests as long as each batch took until its phase has run longer
// than the pass interval: then it is behind the arrivals and rests a
// quarter of that, so it can catch up.
func TestRestAfterShortensOnceAPhaseRunsPastItsInterval(t *testing.T) {
	for _, c := range []struct {
		took, running, want time.Duration
	}{
		{400 * time.Millisecond, 10 * time.Second, 400 * time.Millisecond},
		{400 * time.Millisecond, time.Minute, 400 * time.Millisecond},
		{400 * time.Millisecond, time.Minute + time.Millisecond, 100 * time.Millisecond},
		{400 * time.Millisecond, 10 * time.Minute, 100 * time.Millisecond},
	} {
		if got := restAfter(c.took, c.running, time.Minute); got != c.want {
			t.Errorf("restAfter(%v, %v, 1m) = %v, want %v", c.took, c.running, got, c.want)
		}
	}
}
