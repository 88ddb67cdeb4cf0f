# One gate, run the same way everywhere: `make ci` is what CI and developers run.
CARGO ?= cargo

.PHONY: run demo tour test lint fmt schemas ci services bench fuzz-api

## The service on its embedded default (SQLite under ./data; set DATABASE_URL for PostgreSQL).
run:
	$(CARGO) run -q -p countersign -- serve

## Load the demo tenant into the same store `make run` serves.
demo:
	$(CARGO) run -q -p countersign -- demo

## Approvals played in memory, as a timeline.
tour:
	$(CARGO) run -q -p countersign -- tour --log-format text

## The whole test suite (starts PostgreSQL and NATS first when installed but stopped).
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

## Benchmarks beside their baselines (release build, loopback, about 15 minutes); writes docs/performance.md.
bench: services
	$(CARGO) build --release -q -p countersign -p countersign-bench
	target/release/countersign-bench all

ci: lint test

## schemathesis against the served /openapi.json for a bounded time (FUZZ_SECONDS, default 300).
fuzz-api:
	scripts/fuzz-api.sh
