//! The remote embedder: the embedder's two-lane queue, deadlines and micro-batching, with the
//! vectors made by a service instead of the local model (an OpenAI-compatible
//! `/v1/embeddings` endpoint; the HTTP side is `upstream::embeddings`). A dispatcher thread
//! takes a batch whenever fewer than `concurrency` requests are in flight and hands it to the
//! async runtime as one request; a completion thread runs the callers' callbacks (the cache's
//! index search), so neither the search nor a blocked queue ever runs on the runtime. Word
//! states and pair scores need the local model: those jobs fail at once.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::{EmbedError, EmbedObserver, Embedder, Fit, Job, Queue, Then, Unembedded, Work, next_batch};

/// What [`Remote::embed`] returns.
pub type EmbedFuture = Pin<Box<dyn Future<Output = Result<Vec<Vec<f32>>, EmbedError>> + Send>>;

/// A service that embeds texts in batches.
pub trait Remote: Send + Sync + 'static {
    /// One vector per text, in the texts' order, unit length, by `deadline` (the runtime
    /// also stops waiting then).
    fn embed(&self, texts: Vec<String>, deadline: Instant) -> EmbedFuture;
}

pub struct RemoteSettings {
    /// Jobs each lane holds at most.
    pub queue: usize,
    /// Texts per request at most.
    pub max_batch: usize,
    /// Requests in flight at most.
    pub concurrency: usize,
    /// A text longer than this many characters is not embedded whole ([`Fit::Whole`] gets
    /// `TooLong`, [`Fit::Start`] its first `max_chars`): the service's input limit.
    pub max_chars: usize,
    /// The width of the vectors, when configured.
    pub dimensions: Option<usize>,
    /// Which vector space the vectors live in (see [`Embedder::identity`]).
    pub identity: Arc<str>,
}

/// Requests in flight, bounded; a slot is given back when its guard drops, even if the
/// runtime drops the request's task at shutdown.
struct Slots {
    used: Mutex<usize>,
    freed: Condvar,
    max: usize,
}

struct Slot(Arc<Slots>);

impl Slots {
    /// Blocks until a slot is free.
    fn take(this: &Arc<Slots>) -> Option<Slot> {
        let mut used = this.used.lock().ok()?;
        while *used >= this.max {
            used = this.freed.wait(used).ok()?;
        }
        *used += 1;
        Some(Slot(this.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut used) = self.0.used.lock() {
            *used -= 1;
        }
        self.0.freed.notify_one();
    }
}

/// A request's outcome, for the completion thread.
struct Done {
    thens: Vec<Then>,
    result: Result<Vec<Vec<f32>>, EmbedError>,
    took: Duration,
}

impl Done {
    fn finish(self, observer: &dyn EmbedObserver) {
        let Done { thens, result, took } = self;
        let result = match result {
            Ok(v) if v.len() == thens.len() => Ok(v),
            Ok(v) => Err(EmbedError::Remote(format!(
                "{} vectors for {} texts",
                v.len(),
                thens.len()
            ))),
            Err(e) => Err(e),
        };
        match result {
            Ok(vectors) => {
                observer.batch(thens.len(), took);
                for (then, v) in thens.into_iter().zip(vectors) {
                    then(Ok(&v));
                }
            }
            // Past the deadline, like a job that expired in the queue: a slow service makes
            // misses, counted once per job, not an error line per batch.
            Err(EmbedError::Timeout) => {
                for then in thens {
                    observer.expired();
                    then(Err(Unembedded::Expired));
                }
            }
            Err(e) => {
                observer.failed(&e);
                for then in thens {
                    then(Err(Unembedded::Failed));
                }
            }
        }
    }
}

/// `text` as the service gets it, or `None` when it must be whole and is too long.
fn fitted(mut text: String, fit: Fit, max_chars: usize) -> Option<String> {
    let Some((cut, _)) = text.char_indices().nth(max_chars) else {
        return Some(text);
    };
    match fit {
        Fit::Whole => None,
        Fit::Start => {
            text.truncate(cut);
            Some(text)
        }
    }
}

impl Embedder {
    /// Starts a remote embedder: batches go to `remote` as tasks on `runtime`, at most
    /// `settings.concurrency` at a time.
    pub fn start_remote(
        remote: Arc<dyn Remote>,
        settings: RemoteSettings,
        observer: Arc<dyn EmbedObserver>,
        runtime: tokio::runtime::Handle,
    ) -> Result<Embedder, EmbedError> {
        let queue = Queue::new(settings.queue);
        let max_batch = settings.max_batch.max(1);
        let (done_tx, done_rx) = std::sync::mpsc::channel::<Done>();
        let spawn_err = |e: std::io::Error| EmbedError::Remote(format!("cannot start the embedder thread: {e}"));
        let obs = observer.clone();
        std::thread::Builder::new()
            .name("llm-sidecar-embed-done".into())
            .spawn(move || {
                // Ends when the dispatcher and every request in flight are gone.
                for done in done_rx {
                    done.finish(&*obs);
                }
            })
            .map_err(spawn_err)?;
        let dispatcher = Dispatcher {
            queue: queue.clone(),
            remote,
            slots: Arc::new(Slots {
                used: Mutex::new(0),
                freed: Condvar::new(),
                max: settings.concurrency.max(1),
            }),
            max_batch,
            max_chars: settings.max_chars.max(1),
            observer,
            runtime,
            done: done_tx,
        };
        std::thread::Builder::new()
            .name("llm-sidecar-embed-remote".into())
            .spawn(move || dispatcher.run())
            .map_err(spawn_err)?;
        Ok(Embedder {
            queue,
            quantized: false,
            max_batch,
            verifier: false,
            aligns: false,
            identity: settings.identity,
            dimensions: settings.dimensions,
            epoch: 0,
        })
    }
}

struct Dispatcher {
    queue: Arc<Queue>,
    remote: Arc<dyn Remote>,
    slots: Arc<Slots>,
    max_batch: usize,
    max_chars: usize,
    observer: Arc<dyn EmbedObserver>,
    runtime: tokio::runtime::Handle,
    done: std::sync::mpsc::Sender<Done>,
}

impl Dispatcher {
    fn run(self) {
        let mut jobs: Vec<Job> = Vec::with_capacity(self.max_batch);
        loop {
            // A batch is taken only once it can be sent: until then jobs wait in their lanes,
            // where newer lookups overtake older ones and expired ones are dropped unsent.
            let Some(slot) = Slots::take(&self.slots) else { return };
            if !next_batch(&self.queue, &mut jobs, self.max_batch) {
                return;
            }
            let now = Instant::now();
            let mut texts = Vec::with_capacity(jobs.len());
            let mut thens = Vec::with_capacity(jobs.len());
            let mut deadline = now;
            for j in jobs.drain(..) {
                if j.deadline <= now {
                    self.observer.expired();
                    j.fail(Unembedded::Expired);
                    continue;
                }
                match j.work {
                    Work::Vector { text, fit, then } => match fitted(text, fit, self.max_chars) {
                        Some(t) => {
                            texts.push(t);
                            thens.push(then);
                            deadline = deadline.max(j.deadline);
                        }
                        None => then(Err(Unembedded::TooLong)),
                    },
                    // Word states and pair scores need the local model.
                    Work::Pair { then, .. } => then(Err(Unembedded::Failed)),
                    Work::Verify { then, .. } => then(Err(Unembedded::Failed)),
                }
            }
            if thens.is_empty() {
                continue;
            }
            let (remote, done) = (self.remote.clone(), self.done.clone());
            self.runtime.spawn(async move {
                let start = Instant::now();
                let call = remote.embed(texts, deadline);
                let result = tokio::time::timeout_at(deadline.into(), call)
                    .await
                    .unwrap_or(Err(EmbedError::Timeout));
                let _ = done.send(Done {
                    thens,
                    result,
                    took: start.elapsed(),
                });
                drop(slot);
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embed::{Lane, SubmitError};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Embeds each text as [len, 1], normalised; records batch sizes; can be slow or fail.
    struct Fake {
        batches: Mutex<Vec<usize>>,
        in_flight: AtomicUsize,
        peak: AtomicUsize,
        delay: Duration,
        fail: bool,
    }

    impl Remote for Arc<Fake> {
        fn embed(&self, texts: Vec<String>, _deadline: Instant) -> EmbedFuture {
            let this = self.clone();
            Box::pin(async move {
                let now = this.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                this.peak.fetch_max(now, Ordering::SeqCst);
                this.batches.lock().unwrap().push(texts.len());
                tokio::time::sleep(this.delay).await;
                this.in_flight.fetch_sub(1, Ordering::SeqCst);
                if this.fail {
                    return Err(EmbedError::Remote("HTTP 500".into()));
                }
                Ok(texts
                    .iter()
                    .map(|t| {
                        let (a, b) = (t.chars().count() as f32, 1.0f32);
                        let n = (a * a + b * b).sqrt();
                        vec![a / n, b / n]
                    })
                    .collect())
            })
        }
    }

    struct Quiet;
    impl EmbedObserver for Quiet {
        fn batch(&self, _: usize, _: Duration) {}
        fn expired(&self) {}
        fn failed(&self, _: &EmbedError) {}
    }

    fn start(fake: &Arc<Fake>, concurrency: usize, max_batch: usize) -> Embedder {
        let settings = RemoteSettings {
            queue: 64,
            max_batch,
            concurrency,
            max_chars: 10,
            dimensions: Some(2),
            identity: "test".into(),
        };
        Embedder::start_remote(
            Arc::new(fake.clone()),
            settings,
            Arc::new(Quiet),
            tokio::runtime::Handle::current(),
        )
        .unwrap()
    }

    fn fake(delay_ms: u64, fail: bool) -> Arc<Fake> {
        Arc::new(Fake {
            batches: Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            delay: Duration::from_millis(delay_ms),
            fail,
        })
    }

    async fn vector(e: &Embedder, text: &str, fit: Fit, budget: Duration) -> Result<Vec<f32>, Unembedded> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let then: Then = Box::new(move |v| {
            let _ = tx.send(v.map(<[f32]>::to_vec));
        });
        let deadline = Instant::now() + budget;
        e.submit(text.into(), fit, deadline, Lane::Request, then).unwrap();
        rx.await.unwrap_or(Err(Unembedded::Failed))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn jobs_waiting_together_go_as_one_request_and_concurrency_is_bounded() {
        let f = fake(30, false);
        let e = start(&f, 2, 8);
        let mut waiting = Vec::new();
        for i in 0..40 {
            let e = &e;
            waiting.push(async move { vector(e, &"x".repeat(i % 9 + 1), Fit::Whole, Duration::from_secs(5)).await });
        }
        let results = futures_util::future::join_all(waiting).await;
        for (i, r) in results.iter().enumerate() {
            let v = r.as_ref().unwrap();
            let a = (i % 9 + 1) as f32;
            assert!(
                (v[0] - a / (a * a + 1.0).sqrt()).abs() < 1e-6,
                "job {i} got another job's vector"
            );
        }
        let batches = f.batches.lock().unwrap().clone();
        assert_eq!(batches.iter().sum::<usize>(), 40);
        assert!(batches.len() < 40, "micro-batched: {batches:?}");
        assert!(batches.iter().all(|&b| b <= 8), "{batches:?}");
        assert_eq!(f.peak.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_long_text_a_slow_service_and_a_failing_one_are_misses() {
        let f = fake(0, false);
        let e = start(&f, 1, 4);
        assert_eq!(
            vector(&e, "eleven char", Fit::Whole, Duration::from_secs(5)).await,
            Err(Unembedded::TooLong)
        );
        // Cut to max_chars (10) when the start is enough.
        let v = vector(&e, "eleven char", Fit::Start, Duration::from_secs(5))
            .await
            .unwrap();
        assert!((v[0] - 10.0 / 101f32.sqrt()).abs() < 1e-6);
        // Multi-byte characters are counted as characters, and cut on their boundaries.
        assert!(
            vector(&e, "ééééééééééé", Fit::Start, Duration::from_secs(5))
                .await
                .is_ok()
        );

        let slow = fake(500, false);
        let e = start(&slow, 1, 4);
        let t = Instant::now();
        assert_eq!(
            vector(&e, "q", Fit::Whole, Duration::from_millis(50)).await,
            Err(Unembedded::Expired)
        );
        assert!(t.elapsed() < Duration::from_millis(400), "{:?}", t.elapsed());

        let failing = fake(0, true);
        let e = start(&failing, 1, 4);
        assert_eq!(
            vector(&e, "q", Fit::Whole, Duration::from_secs(5)).await,
            Err(Unembedded::Failed)
        );
        // Pair jobs need the local model.
        let (tx, rx) = tokio::sync::oneshot::channel();
        e.submit_pair(
            "a".into(),
            "b".into(),
            Instant::now() + Duration::from_secs(1),
            Lane::Request,
            Box::new(move |r| {
                let _ = tx.send(r.is_err());
            }),
        )
        .unwrap();
        assert!(rx.await.unwrap());
        assert!(!e.aligns);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_lane_is_refused_at_once() {
        let f = fake(300, false);
        let settings = RemoteSettings {
            queue: 2,
            max_batch: 1,
            concurrency: 1,
            max_chars: 10,
            dimensions: None,
            identity: "test".into(),
        };
        let e = Embedder::start_remote(
            Arc::new(f.clone()),
            settings,
            Arc::new(Quiet),
            tokio::runtime::Handle::current(),
        )
        .unwrap();
        let far = Instant::now() + Duration::from_secs(5);
        let mut refused = 0;
        for i in 0..10 {
            match e.submit(format!("t{i}"), Fit::Whole, far, Lane::Background, Box::new(|_| {})) {
                Ok(()) => {}
                Err(SubmitError::QueueFull) => refused += 1,
                Err(SubmitError::Stopped) => panic!("stopped"),
            }
        }
        assert!(refused >= 6, "{refused}");
    }
}
