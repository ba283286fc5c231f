#!/usr/bin/env bash
# RSS of a serving sidecar whose semantic cache holds N entries (default 100,000): the release
# binary in front of the built-in mock, filled by wrk with distinct questions (each is embedded,
# searched and stored with its vector, as in production), then measured from /proc. Unlike
# `cargo bench --bench semantic` this counts everything the process holds: binary, runtime,
# metrics, connection buffers, model, index and entries.
#
#   benches/cache-rss.sh [entries]            (needs wrk; ~1 min per 20k entries on 2 cores)
#   SEMANTIC=false benches/cache-rss.sh       the exact cache only (no model, no vectors)
set -euo pipefail
cd "$(dirname "$0")/.."
ENTRIES=${1:-100000}
SEMANTIC=${SEMANTIC:-true}
command -v wrk >/dev/null || { echo "needs wrk: apt-get install -y wrk" >&2; exit 2; }
source benches/common.sh
# glibc's settings from the image (Dockerfile), unless given.
export MALLOC_ARENA_MAX=${MALLOC_ARENA_MAX:-2} MALLOC_MMAP_THRESHOLD_=${MALLOC_MMAP_THRESHOLD_:-131072}
UP=$(free_port); SC=$(free_port); ADM=$(free_port)
"$BIN" mock-upstream --listen "127.0.0.1:$UP" --prose-words 60 >/dev/null 2>&1 & PIDS+=($!)
cat > "$WORK/sidecar.yaml" <<YAML
listen: 127.0.0.1:$SC
admin_listen: 127.0.0.1:$ADM
logging: { level: warn }
providers:
  mock: { base_url: "http://127.0.0.1:$UP/v1" }
models:
  gpt-4o-mini: { provider: mock }
cache:
  max_entries: $ENTRIES
  max_bytes: 1073741824
  semantic: { enabled: $SEMANTIC, assets_dir: "$PWD/assets", timeout: 5s, threads: 2, verify_sample: 0 }
YAML
"$BIN" serve --config "$WORK/sidecar.yaml" >/dev/null 2>&1 & PIDS+=($!); SC_PID=$!
wait_http "http://127.0.0.1:$ADM/readyz" 400   # loading the model takes a few seconds
rss() { awk '/VmRSS/ {printf "%.0f", $2/1024}' "/proc/$SC_PID/status"; }
echo "started: RSS $(rss) MiB" >&2
# ONNX Runtime keeps the working memory of the longest input it has run: first 200 questions of
# 5 to 124 words (up to the embedder's 128-token window and past it), so that the figure holds
# for traffic with long questions too.
for i in $(seq 1 200); do
  q=$(printf 'reset %.0s' $(seq 1 $(( 5 + (i * 37) % 120 ))))
  curl -s -o /dev/null -H 'Content-Type: application/json' "http://127.0.0.1:$SC/v1/chat/completions" \
    -d "{\"model\":\"gpt-4o-mini\",\"messages\":[{\"role\":\"user\",\"content\":\"$i $q\"}]}"
done
echo "after 200 questions of 5-124 words: RSS $(rss) MiB" >&2
warm_kib=$(awk '/VmRSS/ {print $2}' "/proc/$SC_PID/status")
# Distinct questions of ~25 words; the mock answers each with ~60 words of prose (~700-byte JSON).
cat > "$WORK/fill.lua" <<'LUA'
local words = {"account","password","reset","settings","security","code","e-mail","minutes","support",
  "phone","bank","card","transfer","limit","daily","branch","statement","balance","fee","interest",
  "loan","mortgage","payment","date","charge","customers","request","block","stolen","team","hours",
  "weekend","holiday","business","approval","documents","identity","address","travel","abroad"}
local n = 0
math.randomseed(os.time() + math.floor(os.clock() * 1e6))
request = function()
  n = n + 1
  local q = {}
  for i = 1, 22 do q[i] = words[math.random(#words)] end
  local body = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"How do I ' ..
    table.concat(q, " ") .. " " .. n .. " " .. math.random(1e9) .. '?"}]}'
  return wrk.format("POST", "/v1/chat/completions", {["Content-Type"] = "application/json"}, body)
end
LUA
entries() { curl -s "http://127.0.0.1:$ADM/metrics" | awk '/^llm_sidecar_cache_entries / {print $2}'; }
while :; do
  n=$(entries); n=${n%.*}
  [ "${n:-0}" -ge "$ENTRIES" ] && break
  wrk -t2 -c8 -d20s -s "$WORK/fill.lua" "http://127.0.0.1:$SC" >/dev/null
  echo "entries ${n:-0} / $ENTRIES, RSS $(rss) MiB" >&2
done
sleep 2
echo "sidecar with $(entries) cached entries: RSS $(rss) MiB ($(awk '/VmRSS/ {printf "%.0f", $2*1.024/1000}' "/proc/$SC_PID/status") MB)"
curl -s "http://127.0.0.1:$ADM/metrics" | grep -E '^llm_sidecar_cache_(bytes|entries) '
awk -v w="$warm_kib" -v n="$(entries)" '/VmRSS/ {printf "resident per entry (over the warmed-up sidecar): %.0f bytes\n", ($2 - w) * 1024 / n}' \
  "/proc/$SC_PID/status"
# What the resident memory is made of, by mapping: the heap (glibc's main arena), anonymous
# mappings (usearch's arenas, other malloc arenas, thread stacks), the binary and the libraries.
awk -v bin="$(readlink -f "$BIN")" '
  /^[0-9a-f]+-[0-9a-f]+ / { name = ($6 == "") ? "anonymous mappings" : $6
                            if (name == bin) name = "llm-sidecar binary"
                            else if (name ~ /libonnxruntime/) name = "libonnxruntime.so"
                            else if (name ~ /^\//) name = "other files (libc, model, ...)" }
  /^Rss:/ { kib[name] += $2 }
  END { for (n in kib) if (kib[n] > 100) printf "  %-32s %6.1f MiB\n", n, kib[n] / 1024 }' "/proc/$SC_PID/smaps" >&2
# The larger anonymous mappings, by size: usearch's arenas double (8, 16, 32, 64 MiB…), glibc's
# thread arenas are 64 MiB regions, thread stacks 2–8 MiB.
python3 - "/proc/$SC_PID/smaps" >&2 <<'PY'
import re, sys
size = anon = None
for line in open(sys.argv[1]):
    m = re.match(r"([0-9a-f]+)-([0-9a-f]+) \S+ \S+ \S+ \S+\s*(\S*)", line)
    if m:
        size, anon = (int(m[2], 16) - int(m[1], 16)) / 2**20, m[3] == ""
    elif line.startswith("Rss:") and anon and int(line.split()[1]) >= 2048:
        print(f"    anonymous {size:7.1f} MiB mapped, {int(line.split()[1]) / 1024:6.1f} MiB resident")
PY
