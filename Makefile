# hookstream — two commands to start: `make run` and `make test`.
GO      ?= go
BIN     := bin/hookstream
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)
# Packages and flags for `make test`; e.g. `make test PKG=./eventstore/ TESTFLAGS=-v`.
PKG       ?= ./...
TESTFLAGS ?=
BENCHTIME ?= 2s
# `make chaos`: the fault schedule's seed (empty: a new one, printed) and how long faults run.
SEED     ?=
DURATION ?= 60s

.DEFAULT_GOAL := help
.PHONY: help build run test bench sbs profile pgperf writes wal pairs idle soak retention-soak chaos screenshots lint migrate db db-stop clean

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  make %-8s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

build: ## build bin/hookstream
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/hookstream

run: build ## run API + workers (uses DATABASE_URL, else a local PostgreSQL under .data/)
	./$(BIN) serve --dev

test: build ## go test -race on a throwaway PostgreSQL (or DATABASE_URL when set)
	@if [ -n "$$DATABASE_URL" ]; then \
		$(GO) test -race -count=1 $(TESTFLAGS) $(PKG); \
	else \
		./$(BIN) devdb exec -- $(GO) test -race -count=1 $(TESTFLAGS) $(PKG); \
	fi

bench: build ## benchmarks on a throwaway PostgreSQL with durable settings (fsync on)
	./$(BIN) devdb exec --durable -- $(GO) test -run '^$$' -bench . -benchtime $(BENCHTIME) -benchmem $(PKG)

BENCH ?= ../shared/bench
N ?= 5000
FAIL ?= 0
ROUNDS ?= 3
RATE ?= 450
MINUTES ?= 30

sbs: build ## side by side with the no-durability limit and a tuned River (needs $(BENCH)); ROUNDS, N
	$(BENCH)/scripts/side-by-side.sh sbs.jsonl $(ROUNDS) $(BIN) $(N) 32 && python3 $(BENCH)/scripts/medians.py sbs.jsonl --baseline river-tuned

profile: build ## one saturated run with pg_stat_statements and a CPU profile into prof/; N, FAIL
	BENCH=$(BENCH) internal/bench/profile.sh $(BIN) $(N) $(FAIL) prof

pgperf: build ## PostgreSQL's CPU by executor stage (perf) over one run; N, FAIL (FIRE_ARGS, PERF_SECONDS; SYSTEM=river for River)
	BENCH=$(BENCH) internal/bench/pgperf.sh $(if $(filter river,$(SYSTEM)),river,$(BIN)) $(N) $(FAIL) prof/pgperf

writes: build ## commits, rows and WAL per webhook at 150/s (2,000 webhooks), River against the engine; FAIL
	BENCH=$(BENCH) internal/bench/writes.sh $(BIN) 2000 $(FAIL)

wal: build ## the WAL one run writes per webhook, by table, index and record kind (pg_walinspect); N, FAIL
	BENCH=$(BENCH) internal/bench/walrel.sh $(BIN) $(N) $(FAIL)

pairs: ## binaries against each other, interleaved, CPU per delivery (BINS="a b", ROUNDS, FAIL, N; FIRE_ARGS)
	BENCH=$(BENCH) internal/bench/pairs.sh pairs.jsonl $(ROUNDS) $(FAIL) $(N) $(BINS)

idle: build ## CPU of engine + PostgreSQL over 20 s without traffic, against River
	BENCH=$(BENCH) internal/bench/idle.sh $(BIN)

chaos: ## seeded faults (engine kills, PostgreSQL crashes, hanging destinations) then the invariants; SEED, DURATION
	HOOKSTREAM_CHAOS_SEED=$(SEED) HOOKSTREAM_CHAOS_DURATION=$(DURATION) $(GO) test -race -count=1 -timeout 60m -run '^TestChaos$$' -v ./cmd/hookstream/

retention-soak: build ## steady RATE webhooks/s for MINUTES, payloads kept 5 min, history HISTORY_MINUTES (10): rate, disk, memory, API latency per 5 min
	BENCH=$(BENCH) internal/bench/retention-soak.sh $(BIN) $(RATE) $(MINUTES) retention-soak

soak: build ## 100,000 webhooks: rate per tenth and table sizes
	BENCH=$(BENCH) internal/bench/run100k.sh $(BIN) 100000 soak

screenshots: build ## the dashboard's pages as the browser test sees them, into docs/screenshots/ (the README's images)
	mkdir -p docs/screenshots
	./$(BIN) devdb exec -- env HOOKSTREAM_SCREENSHOTS=$(CURDIR)/docs/screenshots $(GO) test -count=1 -run '^TestDashboardInABrowser$$' ./handlers/

lint: ## gofmt check and go vet
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt wants to rewrite:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

migrate: build ## apply pending migrations
	./$(BIN) migrate

db: build ## start the local PostgreSQL under .data/ and print its DATABASE_URL
	@./$(BIN) devdb start

db-stop: build ## stop the local PostgreSQL
	./$(BIN) devdb stop

clean: ## stop the local PostgreSQL and remove bin/ and .data/
	-@[ -x $(BIN) ] && ./$(BIN) devdb stop
	rm -rf bin .data
