# One gate, run the same way everywhere: `make ci` is what CI and developers run.
CARGO ?= cargo

.PHONY: run demo tour test lint fmt schemas ci services flake-hunt bench fuzz-api

## The service on its embedded default (SQLite under ./data; set DATABASE_URL for PostgreSQL).
run:
	$(CARGO) run -q -p countersign -- serve

## Load the demo tenant into the same store `make run` serves.
demo:
	$(CARGO) run -q -p countersign -- demo

## Approvals played in memory, as a timeline.
tour:
	$(CARGO) run -q -p countersign -- tour --log-format text

## The whole test suite. scripts/services.sh first installs (Debian packages), configures and starts
## PostgreSQL and NATS when missing or stopped, and creates the tests' Python environment.
test: services
	$(CARGO) test --workspace --all-targets

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## Regenerate schemas/*.json from the code (a test fails when they drift).
schemas:
	$(CARGO) run -q -p countersign -- schemas --out schemas

services:
	@scripts/services.sh

## The whole suite N times on one build (default 10), counting each test's failures.
flake-hunt:
	scripts/flake-hunt.sh $(or $(N),10)

## Benchmarks beside their baselines (release build, loopback; about 22 minutes on the two-core host of
## docs/performance.md, `countersign-bench --runs 1 SECTION` for one section); writes docs/performance.md.
bench: services
	$(CARGO) build --release -q -p countersign -p countersign-bench
	target/release/countersign-bench all

ci: lint test

## schemathesis --checks all against the served /openapi.json as an owner, a requester and an
## auditor, each for a bounded time (FUZZ_SECONDS, default 300; FUZZ_EXAMPLES, default 25).
fuzz-api:
	scripts/fuzz-api.sh
