//! Every default of the config in one place: what a key is when the ConfigMap leaves it out,
//! and why that value (the README's config reference quotes these).

use std::time::Duration;

/// Default address the app talks to: loopback only, so nothing outside the pod can spend the
/// pod's budget.
pub(crate) const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default admin address. Loopback by default; the Kubernetes chart sets `0.0.0.0:9901` so the
/// kubelet's probes and Prometheus can reach it.
pub(crate) const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9901";
/// Chat requests with long histories or base64 images are megabytes; 32 MiB admits the largest
/// image inputs OpenAI accepts while still bounding memory per request.
pub(crate) const DEFAULT_MAX_BODY_BYTES: u64 = 32 * 1024 * 1024;
/// The app shares the pod's loopback with the sidecar: even a 32 MiB body arrives in well
/// under a second. A body still arriving after this long is stalled or hostile.
pub(crate) const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Past [`BODY_RATE_GRACE`], a request body must keep up this average rate (bytes/s). Loopback
/// moves hundreds of MB/s; 16 KiB/s only stops trickles, which pin a connection, a task and
/// the bytes received for as long as the sender likes.
pub(crate) const DEFAULT_BODY_MIN_RATE: u64 = 16 * 1024;
/// Time any body gets before the minimum rate applies (an app that builds its body while
/// sending it, a paused debugger).
pub(crate) const BODY_RATE_GRACE: Duration = Duration::from_secs(5);
/// Kubernetes' default `terminationGracePeriodSeconds` is 30 s; draining for slightly less
/// leaves time to exit before SIGKILL.
pub(crate) const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(25);
/// Time between readiness turning false and the listener closing, so that endpoints
/// controllers stop routing to the pod first. Zero outside Kubernetes.
pub(crate) const DEFAULT_DRAIN_DELAY: Duration = Duration::ZERO;
/// Connecting to a provider should take milliseconds; seconds means it is down.
pub(crate) const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Large models with long prompts can take a minute before the first token (or the whole
/// JSON answer, which arrives with the headers).
pub(crate) const DEFAULT_FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(120);
/// Reasoning models can pause between stream chunks; a minute of silence means a stall.
pub(crate) const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Upper bound on one request, stream included.
pub(crate) const DEFAULT_TOTAL_TIMEOUT: Duration = Duration::from_secs(600);
/// Concurrent upstream requests per provider: enough for one pod's traffic; bounds sockets.
pub(crate) const DEFAULT_MAX_CONNECTIONS: u32 = 256;
/// One retry per candidate: most transient failures (a dropped connection, a 503 during a
/// deploy) clear within one backoff; more retries mostly add latency before failover.
pub(crate) const DEFAULT_MAX_ATTEMPTS: u32 = 2;
pub(crate) const DEFAULT_RETRY_BASE_DELAY: Duration = Duration::from_millis(100);
pub(crate) const DEFAULT_RETRY_MAX_DELAY: Duration = Duration::from_secs(2);
/// Providers send `retry-after: 20` on rate limits; the app is better served by the next
/// candidate than by a 20 s wait.
pub(crate) const DEFAULT_MAX_RETRY_AFTER: Duration = Duration::from_secs(5);
/// Retries may add at most 20 % load (the figure gRPC and Finagle use), plus a floor.
pub(crate) const DEFAULT_RETRY_RATIO: f64 = 0.2;
pub(crate) const DEFAULT_RETRY_MIN_PER_SECOND: f64 = 1.0;
pub(crate) const DEFAULT_RETRY_WINDOW: Duration = Duration::from_secs(10);
pub(crate) const DEFAULT_BREAKER_CONSECUTIVE: u32 = 5;
pub(crate) const DEFAULT_BREAKER_RATIO: f64 = 0.5;
pub(crate) const DEFAULT_BREAKER_MIN_REQUESTS: u32 = 20;
pub(crate) const DEFAULT_BREAKER_WINDOW: Duration = Duration::from_secs(30);
pub(crate) const DEFAULT_BREAKER_OPEN_FOR: Duration = Duration::from_secs(30);
/// A request waiting for a provider slot longer than this gets 503 with `retry-after`.
pub(crate) const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(30);
pub(crate) const DEFAULT_MAX_QUEUED: u64 = 1024;
/// Priority classes when the config names none: weights 8:4:1, so batch work still gets a
/// slot in every 13 under contention.
pub(crate) const DEFAULT_CLASSES: &[(&str, u32)] = &[("realtime", 8), ("interactive", 4), ("batch", 1)];
pub(crate) const DEFAULT_CLASS: &str = "interactive";
/// Cosine needed between the last user turn and a destination's examples (MiniLM puts
/// on-topic paraphrases above ~0.5 and unrelated text below ~0.3).
pub(crate) const DEFAULT_SEMANTIC_ROUTE_THRESHOLD: f32 = 0.5;
pub(crate) const DEFAULT_COMPLEXITY_THRESHOLD: f64 = 0.5;
pub(crate) const DEFAULT_CANARY_WINDOW: Duration = Duration::from_secs(60);
pub(crate) const DEFAULT_CANARY_MIN_REQUESTS: u32 = 20;
pub(crate) const DEFAULT_CANARY_MAX_ERROR_RATE: f64 = 0.1;
/// A soft budget limit at 80 %: time to react (a cheaper tier, an alert) before the hard stop.
pub(crate) const DEFAULT_SOFT_RATIO: f64 = 0.8;
/// A Redis call slower than this is treated as Redis being down for that call.
pub(crate) const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(50);
/// Counters go to Redis every 100 ms: fleet-wide limits overshoot by at most what the fleet
/// serves in that time, and no request waits for Redis.
pub(crate) const DEFAULT_REDIS_SYNC: Duration = Duration::from_millis(100);
pub(crate) const DEFAULT_WARM_ENTRIES: u64 = 10_000;
pub(crate) const DEFAULT_STREAM_MAX_LEN: u64 = 100_000;

/// Cached answers live this long unless `cache.ttl` says otherwise: long enough to matter for
/// repeated questions, short enough that stale facts age out within the working day.
pub(crate) const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(3600);
/// Entries held per sidecar (the semantic index and packed answers for 100k entries fit the
/// 200 MB memory goal with the quantized model: 196 MB measured, `benches/semantic.rs`).
pub(crate) const DEFAULT_CACHE_MAX_ENTRIES: u64 = 100_000;
/// Bytes of cached responses per sidecar.
pub(crate) const DEFAULT_CACHE_MAX_BYTES: u64 = 128 << 20;
/// OpenAI's default temperature is 1.0; requests at or below it may be served from cache.
pub(crate) const DEFAULT_MAX_TEMPERATURE: f64 = 1.0;
/// Cosine similarity needed for a semantic hit, before the guard: the four paraphrase sets the
/// guard was developed with serve no wrong answer there while finding 60–85 % of same-answer
/// pairs; on the two unseen sets it serves 1 wrong in 38 hits, against 4 in 50 at 0.88
/// (`llm-sidecar calibrate`, docs/cache.md).
pub const DEFAULT_SEMANTIC_THRESHOLD: f32 = 0.90;
/// A semantic lookup (embed + search) that takes longer than this is a miss: it must never
/// cost the app more than a few percent of an LLM call.
pub(crate) const DEFAULT_SEMANTIC_TIMEOUT: Duration = Duration::from_millis(50);
/// Share of semantic hits verified against the provider in the background: 5 % costs 5 % of
/// what the semantic cache saves, and finds a systematically wrong pairing within tens of hits.
pub(crate) const DEFAULT_VERIFY_SAMPLE: f32 = 0.05;
/// Two answers to the same question by the same model embed at ≥ 0.85 in practice; answers to
/// different questions that share a topic fall below.
pub(crate) const DEFAULT_VERIFY_AGREEMENT: f32 = 0.85;
/// How far below the threshold the token-alignment band reaches, and how close every content
/// word's partner must be there: over the nine labelled sets in data/ (guard on), serving
/// cosine 0.85–0.90 pairs whose worst-aligned word reaches 0.5 raised recall from 44 % to 53 %
/// with no wrong answer added (docs/cache.md, "Token alignment").
pub(crate) const DEFAULT_ALIGNMENT_BAND: f32 = 0.05;
pub(crate) const DEFAULT_MIN_ALIGNMENT: f32 = 0.5;
/// A pair verifier's score (a probability) a semantic hit needs: even odds.
pub(crate) const DEFAULT_VERIFIER_MIN_SCORE: f32 = 0.5;
/// A remote embedder's texts per request: one request carries what queued meanwhile.
pub(crate) const DEFAULT_REMOTE_EMBED_BATCH: u64 = 64;
/// A remote embedder's requests in flight.
pub(crate) const DEFAULT_REMOTE_EMBED_CONCURRENCY: u64 = 4;
/// Longer texts are not sent whole: the cache's queries are at most 4 KiB anyway, and 4,096
/// characters stay under an 8,191-token input limit for any script.
pub(crate) const DEFAULT_REMOTE_EMBED_MAX_CHARS: u64 = 4096;
/// The lowest threshold `max_wrong_rate` may choose, and where shadow judging starts: below
/// 0.80 the model's neighbours are mostly other questions on the same topic.
pub(crate) const DEFAULT_MIN_THRESHOLD: f32 = 0.80;
/// The highest threshold `max_wrong_rate` may choose: where a route with too little evidence,
/// or one that cannot meet its bound, serves (in practice only near-identical wordings).
pub(crate) const DEFAULT_MAX_THRESHOLD: f32 = 0.99;
/// Lookups waiting for the embedder; beyond this the queue is full and lookups miss at once.
pub(crate) const DEFAULT_EMBED_QUEUE: u64 = 256;
/// Texts that are never cached (and never embedded): e-mail addresses, payment card numbers,
/// US social security numbers, IBANs.
pub(crate) const DEFAULT_PRIVACY_PATTERNS: &[&str] = &[
    r"(?i)\b[a-z0-9._%+-]+@[a-z0-9.-]+\.[a-z]{2,}\b",
    r"\b(?:\d[ -]?){13,19}\b",
    r"\b\d{3}-\d{2}-\d{4}\b",
    // An IBAN: country, check digits, then an 11–30 character BBAN, printed in groups of four
    // or not at all; the last group is often short (DE, GB: 18 characters; FR: 23; NL: 14).
    r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b",
];
