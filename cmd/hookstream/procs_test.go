package main

import (
	"io"
	"log/slog"
	"slices"
	"testing"
	"time"
)

// The engine keeps half the cores (at least one) for itself only when the
// database is on the same machine; a remote database leaves it all.
func TestEngineProcsLeavesHalfTheCoresToALocalDatabase(t *testing.T) {
	for _, c := range []struct {
		cores int
		local bool
		want  int
	}{
		{1, true, 1}, {2, true, 1}, {3, true, 1}, {4, true, 2}, {16, true, 8},
		{1, false, 1}, {2, false, 2}, {16, false, 16},
	} {
		if n := engineProcs(c.cores, c.local); n != c.want {
			t.Errorf("engineProcs(%d, %v) = %d, want %d", c.cores, c.local, n, c.want)
		}
	}
	for host, want := range map[string]bool{
		"": true, "/tmp": true, "/var/run/postgresql": true, "localhost": true, "127.0.0.1": true, "127.0.0.53": true, "::1": true,
		"db.internal": false, "10.0.0.5": false, "192.168.1.2": false, "2001:db8::1": false, "localhost.example.com": false,
	} {
		if got := localHost(host); got != want {
			t.Errorf("localHost(%q) = %v, want %v", host, got, want)
		}
	}
}

// The rule: low Ps until the engine uses half of them for upFor samples in
// a row, high until it has used less than 0.3 of low for downFor in a row.
func TestNextProcsFollowsTheEnginesLoad(t *testing.T) {
	for _, c := range []struct {
		name                  string
		cur                   int
		used                  float64
		streak                int
		wantProcs, wantStreak int
	}{
		{"quiet stays low", 1, 0.2, 0, 1, 0},
		{"just below the step up", 1, 0.49, 1, 1, 0},
		{"one busy sample counts", 1, 0.5, 0, 1, 1},
		{"busy long enough steps up", 1, 0.5, 1, 2, 0},
		{"busy stays high", 2, 0.9, 2, 2, 0},
		{"between the thresholds stays high and resets the count", 2, 0.4, 2, 2, 0},
		{"calm counts", 2, 0.1, 0, 2, 1},
		{"calm long enough steps down", 2, 0.1, 2, 1, 0},
	} {
		procs, streak := nextProcs(c.cur, 1, 2, c.used, 0.5, 0.3, c.streak, 2, 3)
		if procs != c.wantProcs || streak != c.wantStreak {
			t.Errorf("%s: nextProcs = %d, %d; want %d, %d", c.name, procs, streak, c.wantProcs, c.wantStreak)
		}
	}
}

// The governor measures the CPU used between samples as cores (CPU time over
// wall time) and sets GOMAXPROCS only when the rule changes it.
func TestProcsGovernorSetsGOMAXPROCSByCPUUsed(t *testing.T) {
	var cpu time.Duration
	at := time.Date(2026, 12, 3, 0, 0, 0, 0, time.UTC)
	var sets []int
	g := newProcsGovernor(1, 2, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if g.upAt != 0.5 || g.downAt != 0.3 || g.upFor != 2 || g.calmFor != 20 || g.every != 250*time.Millisecond || g.cur != 1 {
		t.Fatalf("defaults: %+v, want up at 0.5 of low for 2 samples, down below 0.3 for 20, every 250 ms, starting low", *g)
	}
	g.cpu, g.now, g.set, g.calmFor = func() (time.Duration, bool) { return cpu, true }, func() time.Time { return at }, func(n int) { sets = append(sets, n) }, 3
	tick := func(usedCores float64) {
		cpu += time.Duration(usedCores * float64(250*time.Millisecond))
		at = at.Add(250 * time.Millisecond)
		g.sample()
	}
	g.sample() // the first sample only starts the clock
	for _, used := range []float64{0.2, 0.45, 0.6, 0.3} {
		tick(used)
	}
	if len(sets) != 0 {
		t.Fatalf("set %v while the engine used under half a core but for one sample", sets)
	}
	tick(0.6)
	tick(0.7)
	tick(0.2) // calm 1
	tick(0.4) // between the thresholds: the count starts again
	tick(0.2)
	tick(0.2)
	if want := []int{2}; !slices.Equal(sets, want) {
		t.Fatalf("sets = %v, want %v (up once, not down before three calm samples in a row)", sets, want)
	}
	tick(0.2)
	if want := []int{2, 1}; !slices.Equal(sets, want) || g.cur != 1 {
		t.Fatalf("sets = %v (cur %d), want %v", sets, g.cur, want)
	}
}

// A reading that fails, or a clock that does not move forward, restarts the
// measurement instead of counting as a busy or calm sample.
func TestProcsGovernorSkipsSamplesItCannotMeasure(t *testing.T) {
	var cpu time.Duration
	ok := true
	at := time.Date(2026, 12, 3, 0, 0, 0, 0, time.UTC)
	var sets []int
	g := newProcsGovernor(1, 2, slog.New(slog.NewTextHandler(io.Discard, nil)))
	g.cpu, g.now, g.set = func() (time.Duration, bool) { return cpu, ok }, func() time.Time { return at }, func(n int) { sets = append(sets, n) }
	g.sample()
	cpu, at = cpu+200*time.Millisecond, at.Add(250*time.Millisecond)
	g.sample() // busy 1 (0.8 cores)
	ok = false
	cpu, at = cpu+10*time.Second, at.Add(250*time.Millisecond)
	g.sample() // unreadable: no sample
	ok = true
	cpu, at = cpu+10*time.Second, at.Add(250*time.Millisecond)
	g.sample() // restarts the clock: the 10 s it missed are not counted
	g.sample() // no time passed: no sample
	if len(sets) != 0 || g.streak != 1 {
		t.Fatalf("sets %v, streak %d: want no switch and the one busy sample still counted", sets, g.streak)
	}
	cpu, at = cpu+200*time.Millisecond, at.Add(250*time.Millisecond)
	g.sample() // busy 2
	if !slices.Equal(sets, []int{2}) {
		t.Fatalf("sets %v, want [2] after two measured busy samples", sets)
	}
}
