package delivery

import "testing"

func TestLastServedFollowsTheRoundRobin(t *testing.T) {
	jobs := func(dests ...string) []dispatchJob {
		out := make([]dispatchJob, len(dests))
		for i, d := range dests {
			out[i] = dispatchJob{DestinationID: d}
		}
		return out
	}
	for _, c := range []struct {
		prev string
		got  []string
		want string
	}{
		{"", []string{"a", "c", "b"}, "c"},       // from the start: the highest
		{"b", []string{"c", "d"}, "d"},           // after b, no wrap
		{"b", []string{"c", "d", "a", "b"}, "b"}, // wrapped: the highest at or below b
		{"d", []string{"a"}, "a"},                // wrapped at once
	} {
		if got := lastServed(jobs(c.got...), c.prev); got != c.want {
			t.Errorf("lastServed(%v, %q) = %q, want %q", c.got, c.prev, got, c.want)
		}
	}
}
