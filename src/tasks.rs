//! The sidecar's background work, in one place: every task that is not serving a connection
//! (cache sweeps, upkeep and health probes, config watches, fleet sync, background verification
//! and shadow judgments, dashboard event streams) is spawned here, so that shutdown can stop
//! them all with one token and wait for them with one tracker — nothing outlives the sidecar
//! unnoticed, and nothing is aborted in the middle of a write it owns.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Clone, Default)]
pub struct Background {
    tracker: TaskTracker,
    stop: CancellationToken,
}

impl Background {
    /// Runs `task` until it ends or shutdown begins, whichever comes first.
    pub(crate) fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let stop = self.stop.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                biased;
                _ = stop.cancelled() => {}
                _ = task => {}
            }
        });
    }

    /// Stops every task and waits (at most `within`) until they are gone; `false` if some
    /// were still running then.
    pub(crate) async fn stop(&self, within: Duration) -> bool {
        self.stop.cancel();
        self.tracker.close();
        tokio::time::timeout(within, self.tracker.wait()).await.is_ok()
    }

    /// Tasks still running.
    pub(crate) fn len(&self) -> usize {
        self.tracker.len()
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.tracker.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stop_ends_every_task_and_waits_for_them() {
        let b = Background::default();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        for _ in 0..3 {
            let tx = tx.clone();
            b.spawn(async move {
                // Holds its sender until it is dropped: the channel closes only when all are gone.
                let _tx = tx;
                std::future::pending::<()>().await;
            });
        }
        drop(tx);
        assert_eq!(b.len(), 3);
        assert!(b.stop(Duration::from_secs(1)).await);
        assert!(b.is_empty());
        assert!(rx.recv().await.is_none(), "every task was dropped");
        // After stop, new work does not run.
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        b.spawn(async move {
            let _ = tx.send(());
        });
        tokio::task::yield_now().await;
        assert!(rx.try_recv().is_err());
    }
}
