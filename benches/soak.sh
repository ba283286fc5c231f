#!/usr/bin/env bash
# A bounded soak on loopback: the release binary serving a config file in front of a provider
# that cycles through every fault mode (and a healthy fallback), under a steady load of JSON
# and SSE requests, with valid, emptied and half-written config edits every few seconds.
# Prints the outcome counts (answered, clean_error, broken, hung, lost) and the sidecar's
# resident memory over time; fails if any answer was broken, hung or lost.
#
#   benches/soak.sh [seconds] [requests per second]      (defaults: 60, 300)
set -euo pipefail
cd "$(dirname "$0")/.."
export SOAK_SECONDS="${1:-60}" SOAK_RATE="${2:-300}"
cargo test --release --locked --test soak -- --ignored --nocapture --test-threads 1 2>&1 \
  | grep -E '^soak|test result|panicked|FAILED'
