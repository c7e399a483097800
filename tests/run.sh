#!/usr/bin/env bash
# Runs carebridge's whole test suite on a fresh Debian machine (as root, as CI does):
#   1. starts real Postfix + Dovecot on 127.0.0.1 (installing them if missing), and a throwaway
#      PostgreSQL (tests/postgres.sh, installing it if missing) for the store's second backend,
#   2. installs the pinned FHIR validators and the FHIR test server (npm; Node.js from Debian if
#      missing),
#   3. runs every test of the workspace (unit, adapter integration, end-to-end against the real
#      daemon binary, a local Bot API server and loopback HTTP),
#   4. builds the benches (not run: they measure, they do not test),
#   5. runs each fuzz target briefly (tests/fuzz.sh, which installs cargo-fuzz if missing),
#   6. stops the mail servers and PostgreSQL, whatever happened.
# The email and PostgreSQL tests are required here (CAREBRIDGE_REQUIRE_MAIL=1,
# CAREBRIDGE_REQUIRE_POSTGRES=1): a missing server is a failure, not a skip.
set -euo pipefail
cd "$(dirname "$0")/.."

export CAREBRIDGE_MAIL_DIR=${CAREBRIDGE_MAIL_DIR:-/tmp/carebridge-mail}
export CAREBRIDGE_MAIL_ENV="$CAREBRIDGE_MAIL_DIR/env"
export CAREBRIDGE_REQUIRE_MAIL=1
export CAREBRIDGE_REQUIRE_FHIR_VALIDATOR=1
export CAREBRIDGE_REQUIRE_FHIR_SERVER=1
export CAREBRIDGE_REQUIRE_SYSTEMD_ANALYZE=1
export CAREBRIDGE_PG_DIR=${CAREBRIDGE_PG_DIR:-/tmp/carebridge-pg}
export CAREBRIDGE_REQUIRE_POSTGRES=1

stop_servers() {
    tests/mail-servers.sh stop "$CAREBRIDGE_MAIL_DIR" >/dev/null 2>&1 || true
    tests/postgres.sh stop "$CAREBRIDGE_PG_DIR" >/dev/null 2>&1 || true
}
trap stop_servers EXIT
tests/mail-servers.sh start "$CAREBRIDGE_MAIL_DIR" >/dev/null
CAREBRIDGE_TEST_POSTGRES=$(tests/postgres.sh start "$CAREBRIDGE_PG_DIR")
export CAREBRIDGE_TEST_POSTGRES

# The FHIR R4 validators tests/e2e/fhir_export.rs runs the export through (required here: pinned in
# tests/fhir/package-lock.json; node_modules stays out of git).
if ! command -v npm >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
fi
npm ci --prefix tests/fhir --ignore-scripts --no-audit --no-fund --loglevel=error
# The FHIR R4 server tests/e2e/e2e_fhir.rs files into (Medplum's FHIR router, in memory, validating
# what it stores; pinned in tests/fhir-server/package-lock.json; needs Node >= 20.19).
npm ci --prefix tests/fhir-server --ignore-scripts --no-audit --no-fund --loglevel=error

# systemd-analyze, for tests/e2e/systemd_unit.rs (verify and security-rate the shipped units); a
# container image has no systemd, and the package is small.
if ! command -v systemd-analyze >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd >/dev/null
fi

# Two test threads per binary: end-to-end tests each run a daemon, and CI has two cores.
cargo test --workspace --locked -- --test-threads=2

# The benches are documented commands (README, "Benchmarks"): build them (test profile, so the
# artifacts above are reused), so one that no longer compiles fails here. Running them is not a
# test: they measure.
cargo test --workspace --locked --benches --no-run

# Last, a short fuzzing run of the input parsers and the privacy engine (docs/fuzzing.md):
# FUZZ_SECONDS (default 20) per target; the instrumented build takes a few minutes the first time.
tests/fuzz.sh
