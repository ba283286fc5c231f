//! Per-provider concurrency with priorities. Each provider admits at most `max_connections`
//! requests at once; the rest wait in one queue per priority class. A freed slot goes to the
//! class whose head waiter has the earliest virtual finish time (weighted fair queueing: each
//! request served advances its class by `1/weight`), so under contention classes share slots
//! in proportion to their weights, higher weights first, and no class with waiters starves.
//!
//! A waiter that gives up (its timeout, or the client disconnected and its future was dropped)
//! leaves the queue at once; a slot handed to a waiter that has just gone is passed on.
//! Locks are held for a few instructions and never across an await.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// Virtual time advanced per request served in a class of weight 1; divided by the weight.
const STRIDE: u64 = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    #[error("{queued} requests are already waiting for this provider (scheduling.max_queued)")]
    Full { queued: usize },
    #[error("no slot for this provider freed up within {0:?} (scheduling.queue_timeout)")]
    Timeout(Duration),
}

struct Waiter {
    id: u64,
    tx: oneshot::Sender<Permit>,
}

struct Class {
    weight: u64,
    /// Virtual finish time of the head waiter.
    pass: u64,
    waiting: VecDeque<Waiter>,
    depth: Option<Gauge>,
}

struct Inner {
    in_use: usize,
    queued: usize,
    next_id: u64,
    /// Virtual time of the last class served; an idle class rejoins at this time, so it
    /// cannot bank credit while it had nothing to send.
    vtime: u64,
    classes: Vec<Class>,
}

pub struct Scheduler {
    limit: usize,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler").field("limit", &self.limit).finish()
    }
}

/// One admitted request; the slot is released (to the next waiter) when this is dropped.
pub struct Permit {
    scheduler: Option<Arc<Scheduler>>,
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Permit")
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(s) = self.scheduler.take() {
            Scheduler::release(&s);
        }
    }
}

/// Removes a waiter from its queue if its future is dropped before it was served.
struct WaitGuard<'a> {
    scheduler: &'a Scheduler,
    class: usize,
    id: u64,
    armed: bool,
}

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Ok(mut inner) = self.scheduler.inner.lock()
            && let Some(c) = inner.classes.get_mut(self.class)
            && let Some(pos) = c.waiting.iter().position(|w| w.id == self.id)
        {
            c.waiting.remove(pos);
            if let Some(g) = &c.depth {
                g.dec();
            }
            inner.queued -= 1;
        }
    }
}

impl Scheduler {
    /// `weights` are the priority classes' weights, in class order.
    pub(crate) fn new(limit: usize, weights: &[u32]) -> Arc<Self> {
        let classes = weights
            .iter()
            .map(|w| Class {
                weight: u64::from((*w).max(1)),
                pass: 0,
                waiting: VecDeque::new(),
                depth: None,
            })
            .collect();
        Arc::new(Scheduler {
            limit: limit.max(1),
            inner: Mutex::new(Inner {
                in_use: 0,
                queued: 0,
                next_id: 0,
                vtime: 0,
                classes,
            }),
        })
    }

    /// Sets the classes' weights and their queue-depth gauges (after a reload). Waiters in
    /// classes that no longer exist move to the last class.
    pub(crate) fn configure(&self, weights: &[u32], depth: Vec<Gauge>) {
        let Ok(mut inner) = self.inner.lock() else { return };
        let n = weights.len().max(1);
        let mut orphans = VecDeque::new();
        while inner.classes.len() > n {
            if let Some(c) = inner.classes.pop() {
                orphans.extend(c.waiting);
            }
        }
        while inner.classes.len() < n {
            let pass = inner.vtime;
            inner.classes.push(Class {
                weight: 1,
                pass,
                waiting: VecDeque::new(),
                depth: None,
            });
        }
        if let Some(last) = inner.classes.last_mut() {
            last.waiting.extend(orphans);
        }
        let mut depth = depth.into_iter();
        for (i, c) in inner.classes.iter_mut().enumerate() {
            c.weight = u64::from(weights.get(i).copied().unwrap_or(1).max(1));
            c.depth = depth.next();
            if let Some(g) = &c.depth {
                g.set(c.waiting.len() as i64);
            }
        }
    }

    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// (in use, waiting) right now.
    pub(crate) fn load(&self) -> (usize, usize) {
        self.inner.lock().map(|i| (i.in_use, i.queued)).unwrap_or((0, 0))
    }

    /// A slot at once, if one is free and nobody waits for one.
    pub(crate) fn try_acquire(self: &Arc<Self>) -> Option<Permit> {
        let Ok(mut inner) = self.inner.lock() else {
            return Some(self.permit());
        };
        if inner.in_use < self.limit && inner.queued == 0 {
            inner.in_use += 1;
            return Some(self.permit());
        }
        None
    }

    /// Waits for a slot in priority `class` for at most `timeout`.
    pub(crate) async fn acquire(
        self: &Arc<Self>,
        class: usize,
        timeout: Duration,
        max_queued: usize,
    ) -> Result<Permit, QueueError> {
        let (id, rx, class) = {
            let Ok(mut inner) = self.inner.lock() else {
                return Ok(self.permit());
            };
            if inner.in_use < self.limit && inner.queued == 0 {
                inner.in_use += 1;
                return Ok(self.permit());
            }
            if inner.queued >= max_queued {
                return Err(QueueError::Full { queued: inner.queued });
            }
            let class = class.min(inner.classes.len().saturating_sub(1));
            let id = inner.next_id;
            inner.next_id += 1;
            let (tx, rx) = oneshot::channel();
            let vtime = inner.vtime;
            let c = &mut inner.classes[class];
            if c.waiting.is_empty() {
                // The head waiter's virtual finish time (weighted fair queueing): an idle class
                // rejoins at the current virtual time, so it cannot bank credit while idle.
                c.pass = c.pass.max(vtime) + STRIDE / c.weight;
            }
            c.waiting.push_back(Waiter { id, tx });
            if let Some(g) = &c.depth {
                g.inc();
            }
            inner.queued += 1;
            (id, rx, class)
        };
        let mut guard = WaitGuard {
            scheduler: self,
            class,
            id,
            armed: true,
        };
        let deadline = Instant::now() + timeout;
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(permit)) => {
                guard.armed = false;
                Ok(permit)
            }
            // The scheduler went away with its provider (a reload); treat as a timeout.
            Ok(Err(_)) | Err(_) => Err(QueueError::Timeout(timeout)),
        }
    }

    fn permit(self: &Arc<Self>) -> Permit {
        Permit {
            scheduler: Some(self.clone()),
        }
    }

    /// Hands a freed slot to the next waiter, or returns it.
    fn release(this: &Arc<Self>) {
        let Ok(mut inner) = this.inner.lock() else { return };
        loop {
            let Some(ci) = inner
                .classes
                .iter()
                .enumerate()
                .filter(|(_, c)| !c.waiting.is_empty())
                .min_by_key(|(i, c)| (c.pass, *i))
                .map(|(i, _)| i)
            else {
                inner.in_use = inner.in_use.saturating_sub(1);
                return;
            };
            let c = &mut inner.classes[ci];
            let Some(w) = c.waiting.pop_front() else { continue };
            let served_at = c.pass;
            if !c.waiting.is_empty() {
                c.pass += STRIDE / c.weight;
            }
            if let Some(g) = &c.depth {
                g.dec();
            }
            inner.queued -= 1;
            inner.vtime = inner.vtime.max(served_at);
            match w.tx.send(this.permit()) {
                Ok(()) => return,
                // The waiter gave up between being queued and now: its permit must not
                // release again (we still hold the lock); take it back and try the next.
                Err(mut p) => {
                    p.scheduler = None;
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn higher_weights_go_first_and_nothing_starves() {
        let s = Scheduler::new(1, &[8, 4, 1]);
        let held = s.acquire(0, Duration::from_secs(5), 100).await.unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        // 26 waiters each in batch (2), interactive (1) and realtime (0), queued batch first.
        for class in [2usize, 1, 0] {
            for _ in 0..26 {
                let s = s.clone();
                let order = order.clone();
                tasks.push(tokio::spawn(async move {
                    let p = s.acquire(class, Duration::from_secs(5), 1000).await.unwrap();
                    order.lock().unwrap().push(class);
                    tokio::task::yield_now().await;
                    drop(p);
                }));
                tokio::task::yield_now().await;
            }
        }
        drop(held);
        for t in tasks {
            t.await.unwrap();
        }
        let order = order.lock().unwrap().clone();
        assert_eq!(order.len(), 78);
        // In the first 13 slots: shares close to 8:4:1, and batch is served (no starvation).
        let first: Vec<usize> = order[..13].to_vec();
        let count = |c| first.iter().filter(|&&x| x == c).count();
        assert!(count(0) >= 7 && count(1) >= 3 && count(2) >= 1, "{first:?}");
        assert_eq!(order[0], 0, "realtime first: {order:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn timeouts_and_cancellation_leave_the_queue() {
        let s = Scheduler::new(1, &[1]);
        let held = s.acquire(0, Duration::from_secs(1), 10).await.unwrap();
        let e = s.acquire(0, Duration::from_millis(100), 10).await.unwrap_err();
        assert_eq!(e, QueueError::Timeout(Duration::from_millis(100)));
        assert_eq!(s.load(), (1, 0));
        // A waiter whose future is dropped (client gone) leaves at once.
        let s2 = s.clone();
        let waiter = tokio::spawn(async move { s2.acquire(0, Duration::from_secs(60), 10).await });
        tokio::task::yield_now().await;
        assert_eq!(s.load(), (1, 1));
        waiter.abort();
        let _ = waiter.await;
        assert_eq!(s.load(), (1, 0));
        drop(held);
        assert_eq!(s.load(), (0, 0));
        // A full queue is refused at once.
        let _a = s.acquire(0, Duration::from_secs(1), 1).await.unwrap();
        let s3 = s.clone();
        let _w = tokio::spawn(async move { s3.acquire(0, Duration::from_secs(60), 1).await });
        tokio::task::yield_now().await;
        assert_eq!(
            s.acquire(0, Duration::from_secs(1), 1).await.unwrap_err(),
            QueueError::Full { queued: 1 }
        );
    }
}
