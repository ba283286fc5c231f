# Shared by the load scripts (sourced, from the repository root): builds the release binary,
# makes a work folder, stops every process in PIDS and removes the folder on exit.
cargo build --release --locked --bin llm-sidecar >&2
BIN=${BIN:-target/release/llm-sidecar}
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# wait_http URL [tries]: until URL answers, 50 ms apart (default 100 tries).
wait_http() { for _ in $(seq 1 "${2:-100}"); do curl -s -o /dev/null "$1" && return 0; sleep 0.05; done; echo "not up: $1" >&2; exit 1; }
