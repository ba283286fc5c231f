//! Where config text comes from and how we learn it changed: a file on disk, watched through
//! its **directory**. Kubelet updates a mounted ConfigMap by writing a new timestamped folder
//! and atomically renaming a `..data` symlink over the old one; a watch on the file itself sees
//! one `Remove` and then nothing, ever. Watching the folder sees every swap, every in-place edit
//! and every editor's write-and-rename. Events are debounced into one "changed" signal; the
//! reloader compares digests, so a spurious signal costs one file read.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// Editors and kubelet touch several files per update within a few milliseconds; waiting for
/// this much quiet turns one update into one reload, and keeps edit→served well under a second.
pub(crate) const DEBOUNCE: Duration = Duration::from_millis(100);

/// A changed file is read again after this long and applied only when both reads agree.
pub(crate) const SETTLE: Duration = Duration::from_millis(50);
/// Reads before giving up on a file that keeps changing (the next change event retries).
const SETTLE_TRIES: u32 = 20;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path} kept changing for {waited:?}; it is read again at its next change")]
    Unsettled { path: PathBuf, waited: Duration },
    #[error("cannot watch {path} for changes: {source}")]
    Watch { path: PathBuf, source: notify::Error },
}

/// A config file on disk.
#[derive(Debug, Clone)]
pub struct FileSource {
    path: PathBuf,
}

impl FileSource {
    pub(crate) fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn read(&self) -> Result<String, SourceError> {
        std::fs::read_to_string(&self.path).map_err(|source| SourceError::Read {
            path: self.path.clone(),
            source,
        })
    }

    /// Reads a file that just changed, applying nothing half-written: an editor saving in
    /// place truncates and then writes, and a read between the two sees an empty or cut-off
    /// file. The text is returned once two reads [`SETTLE`] apart agree.
    pub(crate) fn read_settled(&self) -> Result<String, SourceError> {
        let mut text = self.read()?;
        for _ in 0..SETTLE_TRIES {
            std::thread::sleep(SETTLE);
            let again = self.read()?;
            if again == text {
                return Ok(text);
            }
            text = again;
        }
        Err(SourceError::Unsettled {
            path: self.path.clone(),
            waited: SETTLE * SETTLE_TRIES,
        })
    }

    /// Starts watching. The returned [`Changes`] must be kept alive for the watch to continue.
    pub(crate) fn watch(&self) -> Result<Changes, SourceError> {
        let (tx, rx) = mpsc::channel(1);
        let names = self.relevant_names();
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            let relevant = match res {
                Ok(ev) => {
                    !matches!(ev.kind, EventKind::Access(_))
                        && (ev.paths.is_empty() || ev.paths.iter().any(|p| is_relevant(p, &names)))
                }
                // A watcher error (queue overflow) may hide a change: reload to be safe.
                Err(_) => true,
            };
            if relevant {
                // Full channel means a signal is already pending; that one covers this event.
                let _ = tx.try_send(());
            }
        })
        .map_err(|source| SourceError::Watch {
            path: self.path.clone(),
            source,
        })?;
        for dir in self.watch_dirs() {
            watcher
                .watch(&dir, RecursiveMode::NonRecursive)
                .map_err(|source| SourceError::Watch {
                    path: dir.clone(),
                    source,
                })?;
        }
        Ok(Changes {
            rx,
            _watcher: Box::new(watcher),
        })
    }

    /// File names whose changes matter: the config file and what its symlink resolves to.
    /// Other files in a shared folder (`/tmp`, `/etc`) must not trigger reloads.
    fn relevant_names(&self) -> Vec<std::ffi::OsString> {
        let mut names: Vec<std::ffi::OsString> = self.path.file_name().map(|n| vec![n.to_owned()]).unwrap_or_default();
        if let Some(n) = std::fs::canonicalize(&self.path)
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_owned()))
        {
            names.push(n);
        }
        names
    }

    /// The file's folder, plus the folder its symlink finally resolves to when that is elsewhere
    /// (a hand-made symlink to a file outside the mounted folder).
    fn watch_dirs(&self) -> Vec<PathBuf> {
        let parent = |p: &Path| match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let mut dirs = vec![parent(&self.path)];
        if let Ok(real) = std::fs::canonicalize(&self.path) {
            let real_dir = parent(&real);
            let canon_first = std::fs::canonicalize(&dirs[0]).unwrap_or_else(|_| dirs[0].clone());
            // Kubelet's target lives in a `..<timestamp>` folder beside the file, which the
            // folder watch already covers; only a truly foreign folder needs its own watch.
            if real_dir != canon_first && real_dir.parent() != Some(canon_first.as_path()) {
                dirs.push(real_dir);
            }
        }
        dirs
    }
}

/// Kubelet's bookkeeping entries (`..data`, `..data_tmp`, `..2026_…`) all start with `..`.
fn is_relevant(path: &Path, names: &[std::ffi::OsString]) -> bool {
    match path.file_name() {
        Some(n) => names.iter().any(|x| x == n) || n.as_encoded_bytes().starts_with(b".."),
        None => true,
    }
}

/// Debounced change notifications for a [`FileSource`].
pub struct Changes {
    rx: mpsc::Receiver<()>,
    _watcher: Box<dyn Watcher + Send>,
}

impl Changes {
    /// Waits for the next change, then for [`DEBOUNCE`] of quiet. `None` if the watcher died.
    pub(crate) async fn next(&mut self) -> Option<()> {
        self.rx.recv().await?;
        loop {
            match tokio::time::timeout(DEBOUNCE, self.rx.recv()).await {
                Ok(Some(())) => continue,
                Ok(None) => return None,
                Err(_) => return Some(()),
            }
        }
    }
}
