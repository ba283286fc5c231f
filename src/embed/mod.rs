//! The sentence embedder: all-MiniLM-L6-v2 (int8 ONNX) through ONNX Runtime, loaded
//! dynamically from the assets folder, with its tokenizer. It runs on its own threads, never on
//! the async runtime: callers submit a job to a bounded queue and get the vector through a
//! callback. The queue has two lanes: jobs a request is waiting for (cache lookups, semantic
//! routing) always go before jobs nobody waits for (cache inserts, background verification),
//! so a burst of inserts under load never makes lookups miss their time budget. Jobs that
//! arrive together are embedded as one batch (micro-batching); a job whose deadline passed
//! while queued is dropped unembedded. A full lane is reported at once — the caller treats it
//! as a cache miss, never as an error or a wait. A text longer than the
//! model's window is embedded from its start only when the caller allows it ([`Fit`]). A pair
//! job ([`Embedder::submit_pair`]) returns two texts' words in context instead of pooled
//! vectors, for the cache's token alignment.
//!
//! The same queue can instead feed a remote embedder (`remote`): an OpenAI-compatible
//! `/v1/embeddings` endpoint, batched, a bounded number of requests in flight.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::Tensor;

pub mod pair;
pub mod remote;
pub mod wordpiece;

use pair::PairModel;
use wordpiece::WordPiece;

/// Output width of all-MiniLM-L6-v2.
pub const DIMENSIONS: usize = 384;
/// The model's window, `[CLS]` and `[SEP]` included: the length all-MiniLM-L6-v2 was trained on.
/// A cache key must not be a cut text's vector (two long prompts differing after the cut
/// would meet at cosine 1.0), so longer queries are exact-only ([`Fit::Whole`]); a 256-token
/// window also cost 2.5× the time (25 vs 10 ms) and kept 16 MiB more in ONNX Runtime's arena.
/// Padding is per batch (to the longest), which is what makes short queries fast.
pub const MAX_TOKENS: usize = 128;

pub const LIBRARY_FILE: &str = "libonnxruntime.so";
pub const MODEL_FILE: &str = "model.onnx";
/// The dynamically quantized model `scripts/fetch-assets` prepares; preferred when present.
pub const MODEL_Q8_FILE: &str = "model-q8.onnx";
pub const TOKENIZER_FILE: &str = "tokenizer.json";

#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error("asset {0} is missing (run scripts/fetch-assets)")]
    Missing(PathBuf),
    #[error("cannot load ONNX Runtime from {path}: {detail}")]
    Runtime { path: PathBuf, detail: String },
    #[error("cannot load the embedding model: {0}")]
    Model(String),
    #[error("cannot load the tokenizer: {0}")]
    Tokenizer(String),
    #[error("embedding failed: {0}")]
    Inference(String),
    /// The remote embedder answered with an error or something that is not embeddings.
    #[error("the remote embedder failed: {0}")]
    Remote(String),
    /// The remote embedder did not answer before the batch's deadline.
    #[error("the remote embedder did not answer in time")]
    Timeout,
}

/// ONNX Runtime can be initialised once per process; later loads reuse it. The error is kept
/// as text: the OnceLock hands the same result to every later caller, and ort's is not Clone.
static ENVIRONMENT: OnceLock<Result<ort::environment::Environment, String>> = OnceLock::new();

fn environment(library: &Path) -> Result<&'static ort::environment::Environment, EmbedError> {
    let env = ENVIRONMENT.get_or_init(|| {
        // `ort::init()` without a library panics on first use; `init_from` reports instead.
        let builder = ort::init_from(library).map_err(|e| e.to_string())?;
        builder.with_name("llm-sidecar").build().map_err(|e| e.to_string())
    });
    env.as_ref().map_err(|detail| EmbedError::Runtime {
        path: library.to_owned(),
        detail: detail.clone(),
    })
}

/// An ONNX Runtime session for `model`, set up for a sidecar: basic graph rewrites, its own
/// threads not spinning, no memory patterns.
pub(crate) fn session(library: &Path, model: &Path, intra_threads: usize) -> Result<Session, EmbedError> {
    let env = environment(library)?;
    let model_err = |e: ort::Error| EmbedError::Model(e.to_string());
    Session::builder(env)
        .map_err(model_err)?
        // Basic graph rewrites only: the extended fusions (MatMulIntegerToFloat,
        // attention, GELU) made the quantized model slower on this CPU, not faster: embed p50
        // 2.86 → 2.26 ms and 337 → 448 lookups/s with them off (`cargo bench --bench semantic`);
        // the original model is no slower either (6.7 vs 6.3 ms for 32 tokens).
        .with_optimization_level(GraphOptimizationLevel::Level1)
        .map_err(|e| EmbedError::Model(ort::Error::<()>::from(e).to_string()))?
        .with_intra_threads(intra_threads.max(1))
        .map_err(|e| EmbedError::Model(ort::Error::<()>::from(e).to_string()))?
        .with_inter_threads(1)
        .map_err(|e| EmbedError::Model(ort::Error::<()>::from(e).to_string()))?
        // Spinning threads burn a core between requests; a sidecar must idle quietly.
        .with_intra_op_spinning(false)
        .map_err(|e| EmbedError::Model(ort::Error::<()>::from(e).to_string()))?
        // A memory pattern is planned and kept per input shape, and queries come in every
        // length up to the window: the patterns held 12 MiB more after 3,000 queries of mixed
        // length (measured with a 256-token window), for no measurable speed.
        .with_memory_pattern(false)
        .map_err(|e| EmbedError::Model(ort::Error::<()>::from(e).to_string()))?
        .commit_from_file(model)
        .map_err(model_err)
}

/// The model and tokenizer, used by one thread at a time.
pub struct Model {
    session: Session,
    tokenizer: WordPiece,
    /// Token ids of the batch being built ([`Model::push`]), row after row (kept between calls).
    tokens: Vec<u32>,
    /// Where each row of the batch ends in `tokens`.
    ends: Vec<usize>,
    /// The dynamically quantized model is loaded: its activations are quantized per batch, so
    /// a vector depends slightly (cosine ±0.015) on what else is in the batch.
    pub quantized: bool,
}

impl Model {
    /// Loads from a folder holding `libonnxruntime.so`, `model-q8.onnx` (or `model.onnx`) and
    /// `tokenizer.json`.
    /// Checks the files first: a missing library must be an error, not a panic inside `ort`.
    pub fn load(dir: &Path, intra_threads: usize) -> Result<Model, EmbedError> {
        let library = dir.join(LIBRARY_FILE);
        let q8 = dir.join(MODEL_Q8_FILE);
        let quantized = q8.is_file();
        let model = if quantized { q8 } else { dir.join(MODEL_FILE) };
        let tokenizer = dir.join(TOKENIZER_FILE);
        for f in [&library, &model, &tokenizer] {
            if !f.is_file() {
                return Err(EmbedError::Missing(f.clone()));
            }
        }
        // The tokenizer first: a file of the wrong kind fails before the model's ~0.3 s load.
        let json = std::fs::read_to_string(&tokenizer)
            .map_err(|e| EmbedError::Tokenizer(format!("{}: {e}", tokenizer.display())))?;
        // The shipped file's fixed padding to 128 (10× slower for short queries) and truncation
        // at 128 are not read: batches are padded to their longest text, cut at MAX_TOKENS.
        let tokenizer =
            WordPiece::from_json(&json).map_err(|e| EmbedError::Tokenizer(format!("{}: {e}", tokenizer.display())))?;
        let session = session(&library, &model, intra_threads)?;
        Ok(Model {
            session,
            tokenizer,
            tokens: Vec::new(),
            ends: Vec::new(),
            quantized,
        })
    }

    /// Tokenizes `text` as the next row of the batch [`Model::embed_pushed`] runs, once: to one
    /// token past the window, which tells a text that fits (it keeps its length) from one that
    /// does not. Returns `false`, adding no row, for a [`Fit::Whole`] text that does not fit; a
    /// [`Fit::Start`] one is cut to the window.
    pub(crate) fn push(&mut self, text: &str, fit: Fit) -> bool {
        let start = self.tokens.len();
        self.tokenizer.encode(text, MAX_TOKENS + 1, &mut self.tokens);
        if self.tokens.len() - start > MAX_TOKENS {
            if fit == Fit::Whole {
                self.tokens.truncate(start);
                return false;
            }
            // The window's last text token gives way to `[SEP]`: the row is then what encoding
            // to MAX_TOKENS gives (the tokenizer cuts a prefix).
            let last = self.tokens.len() - 2;
            self.tokens.remove(last);
        }
        self.ends.push(self.tokens.len());
        true
    }

    /// Embeds texts as one batch. A text longer than the window is embedded from its first
    /// [`MAX_TOKENS`] tokens. (The calibration tool, benches and tests; the service pushes
    /// rows itself.)
    #[cfg(any(test, feature = "internals"))]
    pub fn embed(&mut self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        self.tokens.clear();
        self.ends.clear();
        for t in texts {
            self.push(t, Fit::Start);
        }
        self.embed_pushed()
    }

    /// Embeds the rows pushed since the last call, as one batch: mean pooling over the attention
    /// mask, then L2 normalisation. The batch is emptied either way.
    pub(crate) fn embed_pushed(&mut self) -> Result<Vec<Vec<f32>>, EmbedError> {
        let result = self.run_batch();
        self.tokens.clear();
        self.ends.clear();
        result
    }

    fn run_batch(&mut self) -> Result<Vec<Vec<f32>>, EmbedError> {
        let batch = self.ends.len();
        self.infer(|hidden, seq, mask| {
            (0..batch)
                .map(|b| pool(hidden, seq, &mask[b * seq..(b + 1) * seq], b))
                .collect()
        })
    }

    /// Two whole texts' words in context, embedded as one batch of two (a little under two
    /// runs: 5.9 vs 6.3 ms for two 24-word texts); `None` when either is past the window. With the quantized model a text's
    /// states depend slightly on its batch partner — fine for alignment, which compares words,
    /// never for a cache key.
    pub fn pair_words(&mut self, a: &str, b: &str) -> Result<Option<[WordStates; 2]>, EmbedError> {
        self.tokens.clear();
        self.ends.clear();
        if !self.push(a, Fit::Whole) || !self.push(b, Fit::Whole) {
            self.tokens.clear();
            self.ends.clear();
            return Ok(None);
        }
        let ids = self.tokens.clone();
        let split = self.ends[0];
        let (la, lb) = (split, ids.len() - split);
        let result = self.infer(|hidden, seq, _| {
            (
                hidden[..la * DIMENSIONS].to_vec(),
                hidden[seq * DIMENSIONS..(seq + lb) * DIMENSIONS].to_vec(),
            )
        });
        self.tokens.clear();
        self.ends.clear();
        let (ha, hb) = result?;
        Ok(Some([
            WordStates::of(&self.tokenizer, &ids[..split], &ha),
            WordStates::of(&self.tokenizer, &ids[split..], &hb),
        ]))
    }

    /// Runs the pushed rows as one batch and hands `f` the hidden states (`[batch, seq,
    /// DIMENSIONS]`, row-major), the padded length and the attention mask.
    fn infer<R>(&mut self, f: impl FnOnce(&[f32], usize, &[i64]) -> R) -> Result<R, EmbedError> {
        let batch = self.ends.len();
        if batch == 0 {
            return Ok(f(&[], 0, &[]));
        }
        let mut seq = 1;
        let mut start = 0;
        for &end in &self.ends {
            seq = seq.max(end - start);
            start = end;
        }
        // Padded to the longest text of the batch: id 0 ([PAD]), mask 0.
        let mut ids = vec![0i64; batch * seq];
        let mut mask = vec![0i64; batch * seq];
        let mut start = 0;
        for (b, &end) in self.ends.iter().enumerate() {
            let row = &self.tokens[start..end];
            for (t, &id) in row.iter().enumerate() {
                ids[b * seq + t] = i64::from(id);
                mask[b * seq + t] = 1;
            }
            start = end;
        }
        let types = vec![0i64; batch * seq];
        let shape = [batch as i64, seq as i64];
        let inf = |e: ort::Error| EmbedError::Inference(e.to_string());
        let outputs = self
            .session
            .run(ort::inputs![
                "input_ids" => Tensor::from_array((shape, ids)).map_err(inf)?,
                "attention_mask" => Tensor::from_array((shape, mask.clone())).map_err(inf)?,
                "token_type_ids" => Tensor::from_array((shape, types)).map_err(inf)?,
            ])
            .map_err(inf)?;
        let (out_shape, hidden) = outputs[0].try_extract_tensor::<f32>().map_err(inf)?;
        let dims = out_shape.get(2).copied().unwrap_or(0) as usize;
        if dims != DIMENSIONS || hidden.len() != batch * seq * dims {
            return Err(EmbedError::Inference(format!("unexpected output shape {out_shape:?}")));
        }
        Ok(f(hidden, seq, &mask))
    }
}

/// Mean pooling of row `b` over its real tokens, then L2 normalisation (dividing by the
/// count is skipped: the normalisation removes any scale).
fn pool(hidden: &[f32], seq: usize, mask: &[i64], b: usize) -> Vec<f32> {
    let mut v = vec![0f32; DIMENSIONS];
    for (t, &m) in mask.iter().enumerate() {
        if m == 0 {
            continue;
        }
        let at = (b * seq + t) * DIMENSIONS;
        for (acc, x) in v.iter_mut().zip(&hidden[at..at + DIMENSIONS]) {
            *acc += x;
        }
    }
    normalize(&mut v);
    v
}

fn normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= norm);
}

/// A text's words in context: each word's token states (its WordPiece pieces averaged),
/// L2-normalised, with the word's lower-case text.
#[derive(Debug, Clone, Default)]
pub struct WordStates {
    pub(crate) words: Vec<String>,
    /// `words.len() × DIMENSIONS`.
    pub(crate) vectors: Vec<f32>,
}

impl WordStates {
    fn of(tokenizer: &WordPiece, ids: &[u32], hidden: &[f32]) -> WordStates {
        let mut out = WordStates::default();
        // `[CLS]` first and `[SEP]` last are not words.
        let n = ids.len();
        for (t, &id) in ids.iter().enumerate().take(n.saturating_sub(1)).skip(1) {
            let text = tokenizer.token_text(id);
            let state = &hidden[t * DIMENSIONS..(t + 1) * DIMENSIONS];
            match text.strip_prefix("##") {
                Some(rest) if !out.words.is_empty() => {
                    if let Some(w) = out.words.last_mut() {
                        w.push_str(rest);
                    }
                    let at = out.vectors.len() - DIMENSIONS;
                    for (acc, x) in out.vectors[at..].iter_mut().zip(state) {
                        *acc += x;
                    }
                }
                _ => {
                    out.words.push(text.to_owned());
                    out.vectors.extend_from_slice(state);
                }
            }
        }
        for v in out.vectors.chunks_mut(DIMENSIONS) {
            normalize(v);
        }
        out
    }

    pub(crate) fn vector(&self, i: usize) -> &[f32] {
        &self.vectors[i * DIMENSIONS..(i + 1) * DIMENSIONS]
    }
}

/// Why a job got no vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unembedded {
    /// [`Fit::Whole`] and the text is longer than the window.
    TooLong,
    /// The deadline passed while the job was queued.
    Expired,
    /// ONNX Runtime failed (logged by the observer).
    Failed,
}

/// What the worker calls with the vector, on the embedder thread.
pub type Then = Box<dyn FnOnce(Result<&[f32], Unembedded>) + Send>;
/// What the worker calls with two texts' words in context ([`Embedder::submit_pair`]).
pub type PairThen = Box<dyn FnOnce(Result<[WordStates; 2], Unembedded>) + Send>;
/// What the worker calls with the pair verifier's score ([`Embedder::submit_verify`]).
pub type VerifyThen = Box<dyn FnOnce(Result<f32, Unembedded>) + Send>;

/// What a caller needs the vector to stand for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    /// The whole text, or no vector: for cache keys, where a vector of a cut text would make
    /// every prompt with the same first [`MAX_TOKENS`] tokens look identical.
    Whole,
    /// The text's start is enough (routing by topic, comparing two answers).
    Start,
}

struct Job {
    work: Work,
    deadline: Instant,
}

enum Work {
    /// One text's pooled vector; texts queued together are embedded as one batch.
    Vector { text: String, fit: Fit, then: Then },
    /// Two whole texts' word states (token alignment), embedded one at a time.
    Pair { a: String, b: String, then: PairThen },
    /// The pair verifier's score for two texts.
    Verify { a: String, b: String, then: VerifyThen },
}

impl Job {
    fn fail(self, why: Unembedded) {
        match self.work {
            Work::Vector { then, .. } => then(Err(why)),
            Work::Pair { then, .. } => then(Err(why)),
            Work::Verify { then, .. } => then(Err(why)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubmitError {
    /// The queue is full: the embedder is saturated.
    QueueFull,
    /// The worker thread is gone.
    Stopped,
}

/// Batch-level measurements, for metrics.
pub trait EmbedObserver: Send + Sync {
    fn batch(&self, size: usize, took: Duration);
    fn expired(&self);
    fn failed(&self, error: &EmbedError);
}

/// Who is waiting for a job's vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// A request waits for it (a cache lookup, semantic routing): goes first.
    Request,
    /// Nobody waits (a cache insert, a background verification): embedded when no request job
    /// is queued.
    Background,
}

/// The two lanes of waiting jobs, each bounded.
struct Queue {
    state: Mutex<Lanes>,
    ready: Condvar,
    capacity: usize,
}

impl Queue {
    fn new(capacity: usize) -> Arc<Queue> {
        Arc::new(Queue {
            state: Mutex::new(Lanes::default()),
            ready: Condvar::new(),
            capacity: capacity.max(1),
        })
    }
}

#[derive(Default)]
struct Lanes {
    request: VecDeque<Job>,
    background: VecDeque<Job>,
    closed: bool,
}

/// The embedder service: a worker thread owning the model (or the remote embedder's
/// dispatcher), fed through a bounded two-lane queue.
pub struct Embedder {
    queue: Arc<Queue>,
    pub(crate) quantized: bool,
    pub(crate) max_batch: usize,
    /// A pair verifier is loaded ([`Embedder::submit_verify`]).
    pub(crate) verifier: bool,
    /// Word states for token alignment ([`Embedder::submit_pair`]) are available: the local
    /// model only.
    pub(crate) aligns: bool,
    /// Which vector space this embedder's vectors live in: vectors of two embedders with
    /// different identities are never compared.
    pub(crate) identity: Arc<str>,
    /// The width of its vectors, when known before the first one.
    pub(crate) dimensions: Option<usize>,
    /// Set by the owner to tell this embedder's vectors from a predecessor's (0 until then).
    pub(crate) epoch: u64,
}

/// The local model's identity (see [`Embedder::identity`]).
pub const LOCAL_IDENTITY: &str = "local:all-MiniLM-L6-v2";

impl Drop for Embedder {
    fn drop(&mut self) {
        if let Ok(mut l) = self.queue.state.lock() {
            l.closed = true;
        }
        self.queue.ready.notify_all();
    }
}

pub struct EmbedderSettings {
    /// Jobs each lane holds at most.
    pub queue: usize,
    /// `None`: 1 with the quantized model (so a text always gets the same vector), 16 with
    /// the original (batching is exact there and doubles throughput).
    pub max_batch: Option<usize>,
    pub intra_threads: usize,
    /// An optional pair verifier: (model, tokenizer.json).
    pub verifier: Option<(PathBuf, PathBuf)>,
}

impl Embedder {
    /// Loads the model and starts the worker. Fails (and the caller disables semantic caching)
    /// when the assets are missing or unusable.
    pub fn start(
        dir: &Path,
        settings: EmbedderSettings,
        observer: Arc<dyn EmbedObserver>,
    ) -> Result<Embedder, EmbedError> {
        let model = Model::load(dir, settings.intra_threads)?;
        let quantized = model.quantized;
        let pair = match &settings.verifier {
            Some((m, t)) => Some(PairModel::load(&dir.join(LIBRARY_FILE), m, t)?),
            None => None,
        };
        let verifier = pair.is_some();
        let queue = Queue::new(settings.queue);
        let max_batch = settings
            .max_batch
            .unwrap_or(if model.quantized { 1 } else { 16 })
            .max(1);
        let q = queue.clone();
        std::thread::Builder::new()
            .name("llm-sidecar-embed".into())
            .spawn(move || worker(model, pair, q, max_batch, observer))
            .map_err(|e| EmbedError::Model(format!("cannot start the embedder thread: {e}")))?;
        Ok(Embedder {
            queue,
            quantized,
            max_batch,
            verifier,
            aligns: true,
            identity: LOCAL_IDENTITY.into(),
            dimensions: Some(DIMENSIONS),
            epoch: 0,
        })
    }

    /// Queues `text` in `lane`; `then` runs on the embedder thread with the vector. Never
    /// blocks (the lock is held for a push).
    pub fn submit(&self, text: String, fit: Fit, deadline: Instant, lane: Lane, then: Then) -> Result<(), SubmitError> {
        let work = Work::Vector { text, fit, then };
        self.push(Job { work, deadline }, lane)
    }

    /// Queues two texts whose words in context `then` gets (each embedded whole, or
    /// [`Unembedded::TooLong`]): the two questions of a pair the cache judges by token alignment.
    pub(crate) fn submit_pair(
        &self,
        a: String,
        b: String,
        deadline: Instant,
        lane: Lane,
        then: PairThen,
    ) -> Result<(), SubmitError> {
        let work = Work::Pair { a, b, then };
        self.push(Job { work, deadline }, lane)
    }

    /// Queues a pair for the verifier; `then` gets its score (or `Failed` without a verifier,
    /// `TooLong` for a pair past its window).
    pub(crate) fn submit_verify(
        &self,
        a: String,
        b: String,
        deadline: Instant,
        lane: Lane,
        then: VerifyThen,
    ) -> Result<(), SubmitError> {
        let work = Work::Verify { a, b, then };
        self.push(Job { work, deadline }, lane)
    }

    fn push(&self, job: Job, lane: Lane) -> Result<(), SubmitError> {
        let mut l = self.queue.state.lock().map_err(|_| SubmitError::Stopped)?;
        if l.closed {
            return Err(SubmitError::Stopped);
        }
        let cap = self.queue.capacity;
        let lane = match lane {
            Lane::Request => &mut l.request,
            Lane::Background => &mut l.background,
        };
        if lane.len() >= cap {
            return Err(SubmitError::QueueFull);
        }
        lane.push_back(job);
        drop(l);
        self.queue.ready.notify_one();
        Ok(())
    }
}

/// The next batch: request jobs first, background jobs only when no request job waits.
/// Request jobs are taken newest first. Under overload a first-come queue makes every lookup
/// wait past its budget (all miss); the newest job has the most budget left, so serving it
/// first keeps the share served in time at what the model can do, and the oldest expire.
/// Jobs whose deadline has passed are handed back to the worker to be answered `Expired`.
fn next_batch(queue: &Queue, jobs: &mut Vec<Job>, max_batch: usize) -> bool {
    let Ok(mut l) = queue.state.lock() else { return false };
    while l.request.is_empty() && l.background.is_empty() {
        if l.closed {
            return false;
        }
        l = match queue.ready.wait(l) {
            Ok(l) => l,
            Err(_) => return false,
        };
    }
    let now = Instant::now();
    if !l.request.is_empty() {
        // Expired jobs go out with the batch (the worker tells their callers, and the
        // metric) without counting against its size.
        let (mut live, mut kept) = (0, VecDeque::with_capacity(l.request.len()));
        while let Some(j) = l.request.pop_back() {
            if j.deadline <= now {
                jobs.push(j);
            } else if live < max_batch {
                live += 1;
                jobs.push(j);
            } else {
                kept.push_front(j);
            }
        }
        l.request = kept;
    } else {
        let n = l.background.len().min(max_batch);
        jobs.extend(l.background.drain(..n));
    }
    true
}

fn worker(
    mut model: Model,
    mut pair: Option<PairModel>,
    queue: Arc<Queue>,
    max_batch: usize,
    observer: Arc<dyn EmbedObserver>,
) {
    let mut jobs: Vec<Job> = Vec::with_capacity(max_batch);
    let mut live: Vec<Then> = Vec::with_capacity(max_batch);
    let mut pairs: Vec<(String, String, PairThen)> = Vec::new();
    while next_batch(&queue, &mut jobs, max_batch) {
        let now = Instant::now();
        for j in jobs.drain(..) {
            if j.deadline <= now {
                observer.expired();
                j.fail(Unembedded::Expired);
                continue;
            }
            match j.work {
                // Each live text is tokenized here, once, into the batch.
                Work::Vector { text, fit, then } => {
                    if model.push(&text, fit) {
                        live.push(then);
                    } else {
                        then(Err(Unembedded::TooLong));
                    }
                }
                Work::Pair { a, b, then } => pairs.push((a, b, then)),
                Work::Verify { a, b, then } => {
                    let Some(p) = pair.as_mut() else {
                        then(Err(Unembedded::Failed));
                        continue;
                    };
                    match p.score(&a, &b) {
                        Ok(Some(score)) => then(Ok(score)),
                        Ok(None) => then(Err(Unembedded::TooLong)),
                        Err(e) => {
                            observer.failed(&e);
                            then(Err(Unembedded::Failed));
                        }
                    }
                }
            }
        }
        if !live.is_empty() {
            let start = Instant::now();
            match model.embed_pushed() {
                Ok(vectors) => {
                    observer.batch(live.len(), start.elapsed());
                    for (then, v) in live.drain(..).zip(vectors) {
                        then(Ok(&v));
                    }
                }
                Err(e) => {
                    observer.failed(&e);
                    for then in live.drain(..) {
                        then(Err(Unembedded::Failed));
                    }
                }
            }
        }
        for (a, b, then) in pairs.drain(..) {
            let start = Instant::now();
            match model.pair_words(&a, &b) {
                Ok(Some(words)) => {
                    observer.batch(2, start.elapsed());
                    then(Ok(words));
                }
                Ok(None) => then(Err(Unembedded::TooLong)),
                Err(e) => {
                    observer.failed(&e);
                    then(Err(Unembedded::Failed));
                }
            }
        }
    }
}

/// Cosine similarity of two L2-normalised vectors.
pub(crate) fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[cfg(test)]
mod tests;
