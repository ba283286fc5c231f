// A benchmark is a measurement script: a failed assumption should stop it loudly; it spawns freely.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::disallowed_methods)]
//! Semantic cache figures on this machine, with the real model (run `scripts/fetch-assets`):
//! - one lookup = embed a ~32-token query + search a 100k-entry partition, on one core: p50/p99;
//! - throughput of concurrent lookups through the embedder service (queue + micro-batching);
//! - i8 vs f16 index: search latency and memory at 100k;
//! - process RSS with the model loaded and 100k cached entries (~600-byte OpenAI-shaped answers).
//!
//! `cargo bench --bench semantic` (about two minutes; most of it is building the 100k index).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use llm_sidecar::cache::store::{NewEntry, Store};
use llm_sidecar::embed::{
    DIMENSIONS, EmbedError, EmbedObserver, Embedder, EmbedderSettings, Fit, Lane, Model, Unembedded,
};

const ENTRIES: usize = 100_000;
const QUERY: &str = "How do I reset the password of my online banking account if I no longer have access to the phone number I registered with?";

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS")).map(|l| l.to_owned()))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|k| k.parse::<f64>().ok()))
        .map_or(0.0, |kb| kb / 1024.0)
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

const WORDS: &[&str] = &[
    "the",
    "account",
    "password",
    "reset",
    "settings",
    "open",
    "choose",
    "security",
    "then",
    "you",
    "will",
    "receive",
    "a",
    "code",
    "by",
    "e-mail",
    "enter",
    "it",
    "within",
    "ten",
    "minutes",
    "if",
    "does",
    "not",
    "arrive",
    "check",
    "your",
    "spam",
    "folder",
    "or",
    "contact",
    "support",
    "app",
    "phone",
    "number",
    "bank",
    "card",
    "transfer",
    "limit",
    "daily",
    "branch",
    "online",
    "statement",
    "balance",
    "fee",
    "interest",
    "rate",
    "loan",
    "mortgage",
    "payment",
    "due",
    "date",
    "late",
    "charge",
    "waived",
    "first",
    "time",
    "customers",
    "can",
    "request",
    "new",
    "PIN",
    "block",
    "lost",
    "stolen",
    "immediately",
    "call",
    "our",
    "team",
    "available",
    "hours",
    "weekends",
    "holidays",
    "is",
    "are",
    "and",
    "to",
    "of",
    "in",
    "for",
    "with",
    "on",
    "this",
    "that",
    "be",
    "from",
    "which",
    "usually",
    "takes",
    "two",
    "business",
    "days",
    "after",
    "approval",
    "documents",
    "identity",
    "proof",
    "address",
];

/// An answer as a provider returns it: OpenAI's envelope (ids, usage, fingerprint) around ~25
/// words of varied text, ~600 bytes. Random words from a 100-word vocabulary compress worse
/// than real prose, which repeats phrases.
fn answer(i: usize) -> Bytes {
    let mut rng = fastrand::Rng::with_seed(i as u64 * 7919 + 3);
    let mut text = String::new();
    for w in 0..25 {
        if w > 0 {
            text.push(' ');
        }
        text.push_str(WORDS[rng.usize(..WORDS.len())]);
    }
    text.push('.');
    let id: String = (0..29).map(|_| rng.alphanumeric()).collect();
    let (p, c) = (rng.u32(10..400), rng.u32(10..300));
    Bytes::from(format!(
        r#"{{"id":"chatcmpl-{id}","object":"chat.completion","created":{},"model":"gpt-4o-mini-2024-07-18","choices":[{{"index":0,"message":{{"role":"assistant","content":"{text}","refusal":null,"annotations":[]}},"logprobs":null,"finish_reason":"stop"}}],"usage":{{"prompt_tokens":{p},"completion_tokens":{c},"total_tokens":{},"prompt_tokens_details":{{"cached_tokens":0,"audio_tokens":0}},"completion_tokens_details":{{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}}},"service_tier":"default","system_fingerprint":"fp_{:010x}"}}"#,
        1_741_569_952 + i,
        p + c,
        rng.u64(..) >> 24
    ))
}

/// Clustered unit vectors (500 topics, many near neighbours), generated on demand so the
/// benchmark's own copy does not inflate the RSS being measured.
struct Synthetic {
    centers: Vec<Vec<f32>>,
}

impl Synthetic {
    fn new() -> Self {
        let mut rng = fastrand::Rng::with_seed(7);
        Synthetic {
            centers: (0..500)
                .map(|_| (0..DIMENSIONS).map(|_| rng.f32() - 0.5).collect())
                .collect(),
        }
    }

    fn vector(&self, i: usize) -> Vec<f32> {
        let mut rng = fastrand::Rng::with_seed(1_000_003 * i as u64 + 11);
        let c = &self.centers[i % self.centers.len()];
        let mut v: Vec<f32> = c.iter().map(|x| x + (rng.f32() - 0.5) * 0.3).collect();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter_mut().for_each(|x| *x /= norm);
        v
    }
}

struct Quiet;
impl EmbedObserver for Quiet {
    fn batch(&self, _: usize, _: Duration) {}
    fn expired(&self) {}
    fn failed(&self, _: &EmbedError) {}
}

fn main() {
    let assets = std::env::var_os("LLM_SIDECAR_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("assets"));
    let rss_start = rss_mib();
    let mut model = Model::load(&assets, 1).expect("assets (run scripts/fetch-assets)");
    let rss_loaded = rss_mib();
    // A serving embedder sees queries of every length; ONNX Runtime's working memory grows with
    // the shapes it has run, so the RSS goal is measured after a mixed-length warm-up, not
    // straight after the load.
    let words: Vec<&str> = QUERY.split_whitespace().collect();
    for i in 0..600 {
        let n = 1 + (i * 37) % 120;
        let text: Vec<&str> = (0..n).map(|j| words[(i + j) % words.len()]).collect();
        model.embed(&[&text.join(" ")]).expect("embed");
    }
    let rss_model = rss_mib();
    let tokens = QUERY.split_whitespace().count();
    println!(
        "model: quantized={} (RSS {:.0} → {:.0} MiB after load → {:.0} MiB after 600 queries of 1-120 words)",
        model.quantized, rss_start, rss_loaded, rss_model
    );

    // Build a 100k-entry partition through the real store.
    let store = Store::default();
    let vectors = Synthetic::new();
    // One tenant, route and model, shared by every entry as in the sidecar (which clones them
    // from its config); a fresh string per entry would add ~9 MiB the sidecar never spends.
    let (tenant, route, served): (Arc<str>, Arc<str>, Arc<str>) = ("t".into(), "r".into(), "m".into());
    let t = Instant::now();
    let partition = [1u8; 32];
    let mut index = None;
    let mut raw = 0usize;
    for i in 0..ENTRIES {
        let v = &vectors.vector(i);
        let mut exact = [0u8; 32];
        exact[..8].copy_from_slice(&(i as u64).to_le_bytes());
        let (id, idx, _) = store.insert(
            NewEntry {
                exact,
                partition: Some(partition),
                tenant: tenant.clone(),
                route: route.clone(),
                query: Some(format!("synthetic query number {i} about topic {}", i % 500)),
                response: {
                    let a = answer(i);
                    raw += a.len();
                    a
                },
                model: served.clone(),
                expires: Instant::now() + Duration::from_secs(3600),
            },
            usize::MAX,
            usize::MAX,
        );
        let idx = idx.expect("partition index");
        idx.add(id, v);
        index = Some(idx);
    }
    let index = index.expect("index");
    println!(
        "built {} entries in {:.1} s ({:.0} inserts/s)",
        ENTRIES,
        t.elapsed().as_secs_f64(),
        ENTRIES as f64 / t.elapsed().as_secs_f64()
    );
    let rss_full = rss_mib();
    println!(
        "RSS with model + {ENTRIES} entries: {:.0} MiB (model {:.0} MiB; index {:.0} MiB as usearch reports it, reservations included; answers {:.1} MiB as received; cache accounting {:.0} MiB)",
        rss_full,
        rss_model - rss_start,
        store.index_memory() as f64 / 1048576.0,
        raw as f64 / 1048576.0,
        store.bytes() as f64 / 1048576.0
    );

    // One lookup: embed (~32 tokens) + search, single thread.
    let mut embed_t = Vec::new();
    let mut search_t = Vec::new();
    let mut total_t = Vec::new();
    for i in 0..300 {
        let q = format!("{QUERY} ({i})");
        let t0 = Instant::now();
        let v = model.embed(&[&q]).expect("embed");
        let t1 = Instant::now();
        let found = index.search(&v[0], 4);
        let t2 = Instant::now();
        assert!(!found.is_empty());
        embed_t.push(t1 - t0);
        search_t.push(t2 - t1);
        total_t.push(t2 - t0);
    }
    println!(
        "lookup (embed {tokens} words + search {ENTRIES}): p50 {:.2} ms, p99 {:.2} ms  [embed p50 {:.2} ms, search p50 {:.3} ms p99 {:.3} ms]",
        percentile(&mut total_t, 0.5).as_secs_f64() * 1e3,
        percentile(&mut total_t, 0.99).as_secs_f64() * 1e3,
        percentile(&mut embed_t, 0.5).as_secs_f64() * 1e3,
        percentile(&mut search_t, 0.5).as_secs_f64() * 1e3,
        percentile(&mut search_t, 0.99).as_secs_f64() * 1e3,
    );
    // A lookup whose best candidate lies in the alignment band (just under the threshold)
    // also needs both questions' word states: one pair job, two whole-text embeddings + the
    // alignment score.
    let mut align_t = Vec::new();
    for i in 0..300 {
        let q = format!("{QUERY} ({i})");
        let t0 = Instant::now();
        let [a, b] = model.pair_words(&q, QUERY).expect("embed").expect("fits");
        let score = llm_sidecar::cache::align::score(&a, &b);
        align_t.push(t0.elapsed());
        assert!(score.0 > 0.0);
    }
    println!(
        "alignment pair job (2 x {tokens} words, band candidates only): p50 {:.2} ms, p99 {:.2} ms — a band lookup costs about lookup + this",
        percentile(&mut align_t, 0.5).as_secs_f64() * 1e3,
        percentile(&mut align_t, 0.99).as_secs_f64() * 1e3,
    );
    drop(model);

    // Concurrent lookups through the service: 64 callers, bounded queue, micro-batching.
    for max_batch in [1usize, 8, 32] {
        let embedder = Arc::new(
            Embedder::start(
                &assets,
                EmbedderSettings {
                    queue: 256,
                    max_batch: Some(max_batch),
                    intra_threads: 1,
                    verifier: None,
                },
                Arc::new(Quiet),
            )
            .expect("embedder"),
        );
        let done = Arc::new(AtomicUsize::new(0));
        let n = 2000;
        let t = Instant::now();
        let (tx, rx) = std::sync::mpsc::channel();
        let mut submitted = 0;
        while submitted < n {
            let in_flight = submitted - done.load(Ordering::Relaxed);
            if in_flight >= 64 {
                let _ = rx.recv_timeout(Duration::from_millis(5));
                continue;
            }
            let done2 = done.clone();
            let idx = index.clone();
            let tx2 = tx.clone();
            let then = Box::new(move |v: Result<&[f32], Unembedded>| {
                if let Ok(v) = v {
                    let _ = idx.search(v, 4);
                }
                done2.fetch_add(1, Ordering::Relaxed);
                let _ = tx2.send(());
            });
            if embedder
                .submit(
                    format!("{QUERY} {submitted}"),
                    Fit::Whole,
                    Instant::now() + Duration::from_secs(30),
                    Lane::Request,
                    then,
                )
                .is_ok()
            {
                submitted += 1;
            }
        }
        while done.load(Ordering::Relaxed) < n {
            let _ = rx.recv_timeout(Duration::from_millis(5));
        }
        println!(
            "concurrent lookups (64 in flight, max_batch {max_batch}, 1 thread): {:.0} lookups/s",
            n as f64 / t.elapsed().as_secs_f64()
        );
    }

    // i8 vs f16 at 100k: memory and search latency of the bare index.
    for (name, q) in [("i8", usearch::ScalarKind::I8), ("f16", usearch::ScalarKind::F16)] {
        let opts = usearch::IndexOptions {
            dimensions: DIMENSIONS,
            metric: usearch::MetricKind::Cos,
            quantization: q,
            connectivity: 12,
            ..Default::default()
        };
        let idx = usearch::Index::new(&opts).expect("index");
        idx.reserve(ENTRIES).expect("reserve");
        for i in 0..ENTRIES {
            idx.add(i as u64, &vectors.vector(i)).expect("add");
        }
        // Queries are stored vectors nudged to cosine ≈ 0.96, as a paraphrase would be: the
        // cache needs the original found first.
        let mut rng = fastrand::Rng::with_seed(5);
        let mut times = Vec::new();
        let mut recall = 0;
        for k in 0..1000 {
            let i = rng.usize(..ENTRIES);
            let mut q: Vec<f32> = vectors
                .vector(i)
                .iter()
                .map(|x| x + (rng.f32() - 0.5) * 0.025)
                .collect();
            let norm = q.iter().map(|x| x * x).sum::<f32>().sqrt();
            q.iter_mut().for_each(|x| *x /= norm);
            let _ = k;
            let t0 = Instant::now();
            let m = idx.search(&q, 1).expect("search");
            times.push(t0.elapsed());
            if m.keys.first() == Some(&(i as u64)) {
                recall += 1;
            }
        }
        println!(
            "usearch {name}: memory {:.0} MiB, search p50 {:.3} ms p99 {:.3} ms, recall@1 {:.1} %",
            idx.memory_usage() as f64 / 1048576.0,
            percentile(&mut times, 0.5).as_secs_f64() * 1e3,
            percentile(&mut times, 0.99).as_secs_f64() * 1e3,
            recall as f64 / 10.0
        );
    }
}
