# One gate, run the same way everywhere: `make ci` is what CI and developers run.
CARGO ?= cargo

.PHONY: run demo tour test lint fmt schemas ci services flake-hunt bench bench-quick fuzz-api deny deny-advisories chaos

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

## Benchmarks beside their baselines (release build, loopback; about 50 minutes on the two-core host of
## docs/performance.md: 10 of them the sustained run, 18 the scaling section's 5M-event log; `countersign-bench --runs 1 SECTION` for one
## section, `--sustained-seconds N` for a shorter sustained run); writes docs/performance.md and its
## charts under docs/perf/. Each section's time is printed as it ends.
bench: services
	$(CARGO) build --release -q -p countersign -p countersign-bench
	target/release/countersign-bench all

## A quick look (`countersign-bench --quick all`): one short run per figure, a one-minute sustained
## run, no section that seeds a million events; writes target/performance-quick.md, never the docs.
bench-quick: services
	$(CARGO) build --release -q -p countersign -p countersign-bench
	target/release/countersign-bench --quick all

ci: lint deny test

## schemathesis --checks all against the served /openapi.json as an owner, a requester and an
## auditor, each for a bounded time (FUZZ_SECONDS, default 300; FUZZ_EXAMPLES, default 25).
fuzz-api:
	scripts/fuzz-api.sh

## cargo-deny against deny.toml, offline: licenses, bans (one TLS stack, one SQLite) and sources.
## `cargo fetch` first: cargo-deny reads the metadata of every platform's crates, which a build
## for this host never downloads (a fresh clone's CI failed on wasm-bindgen's manifest).
## cargo-deny is installed into target/tools on first use (from crates.io).
DENY = target/tools/bin/cargo-deny
$(DENY):
	$(CARGO) install --quiet --root target/tools cargo-deny --locked

deny: $(DENY)
	$(CARGO) fetch --locked -q
	$(DENY) --offline check --hide-inclusion-graph licenses bans sources

## The RustSec advisories: needs the advisory database's git host, which the project's machines
## cannot reach; run it where the network allows (docs/operations.md, "Supply chain").
deny-advisories: $(DENY)
	$(DENY) check advisories

## The service under load while its parts fail, on PostgreSQL and NATS servers of its own
## (10 to 20 minutes on the two-core host, loopback only); prints the table docs/chaos.md shows.
chaos:
	scripts/chaos.sh
