package main

import (
	"context"
	"log/slog"
	"runtime"
	"syscall"
	"time"
)

// procsGovernor moves the Go runtime between low and high Ps (GOMAXPROCS)
// by how busy the engine is, when PostgreSQL shares the machine and
// GOMAXPROCS is not set.
//
// Neither fixed setting serves both loads. With a P per core, a quiet
// engine's goroutine hops woke idle threads on cores PostgreSQL needed
// (150 webhooks/s on 2 cores: engine CPU per delivery -17% with one P). A
// busy one, held to half the cores, left a core idle whenever PostgreSQL
// waited on a WAL flush (saturated, first attempt failing, 4 interleaved
// pairs: the machine 87% busy with one P, 91-93% with two; 1,149 against
// 1,247 deliveries/s). So the engine keeps low Ps while it uses less than
// upAt of them, and takes high once it uses at least that for upFor samples
// in a row; it goes back after calmFor samples in a row below downAt. The
// gap between upAt and downAt is hysteresis: a load near one threshold
// does not switch back and forth.
type procsGovernor struct {
	low, high    int
	upAt, downAt float64 // cores used, as a share of low
	upFor        int     // samples in a row at or above upAt before stepping up
	calmFor      int     // samples in a row below downAt before stepping down
	cur, streak  int
	lastCPU      time.Duration
	lastAt       time.Time
	cpu          func() (time.Duration, bool) // the process's CPU time so far; false when unreadable
	set          func(int)                    // runtime.GOMAXPROCS
	log          *slog.Logger
	every        time.Duration
	now          func() time.Time
}

func newProcsGovernor(low, high int, log *slog.Logger) *procsGovernor {
	return &procsGovernor{low: low, high: high, upAt: 0.5, downAt: 0.3, upFor: 2, calmFor: 20, cur: low,
		cpu: processCPU, set: func(n int) { runtime.GOMAXPROCS(n) }, log: log, every: 250 * time.Millisecond, now: time.Now}
}

// nextProcs is the governor's rule: the Ps to run with after a sample in
// which the engine used `used` cores, given how many samples in a row so far
// pointed the other way (streak); a step needs upFor busy samples in a row
// up, calmFor calm ones down, so a burst or a lull of one sample moves
// nothing.
func nextProcs(cur, low, high int, used, upAt, downAt float64, streak, upFor, calmFor int) (procs, nextStreak int) {
	if cur == low {
		if used < upAt*float64(low) {
			return low, 0
		}
		if streak+1 >= upFor {
			return high, 0
		}
		return low, streak + 1
	}
	if used >= downAt*float64(low) {
		return high, 0
	}
	if streak+1 >= calmFor {
		return low, 0
	}
	return high, streak + 1
}

// sample reads the CPU used since the last sample and applies the rule. A
// sample whose reading failed, or whose clock or CPU time did not move
// forward, only restarts the measurement.
func (g *procsGovernor) sample() {
	at := g.now()
	cpu, ok := g.cpu()
	if ok && !g.lastAt.IsZero() && at.After(g.lastAt) && cpu >= g.lastCPU {
		used := float64(cpu-g.lastCPU) / float64(at.Sub(g.lastAt))
		next, streak := nextProcs(g.cur, g.low, g.high, used, g.upAt, g.downAt, g.streak, g.upFor, g.calmFor)
		g.streak = streak
		if next != g.cur {
			g.set(next)
			g.log.Debug("Go runtime: Ps follow the engine's load", "gomaxprocs", next, "engine_cores_used", used)
			g.cur = next
		}
	}
	if !ok {
		g.lastAt = time.Time{}
		return
	}
	g.lastAt, g.lastCPU = at, cpu
}

// run samples every g.every until ctx ends.
func (g *procsGovernor) run(ctx context.Context) {
	t := time.NewTicker(g.every)
	defer t.Stop()
	g.sample()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			g.sample()
		}
	}
}

// processCPU is the user and system CPU time this process has used; false
// when getrusage fails.
func processCPU() (time.Duration, bool) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, false
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), true
}
