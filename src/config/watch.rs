//! Notices changes to the model configuration directory and publishes each
//! new [`DeclarationSet`]: on filesystem events on the directory — kubelet's
//! `..data` symlink swap changes no visible file, but it creates and renames
//! entries in the directory itself — and, as a fallback for filesystems
//! without events, on a periodic re-read compared by digest.
//!
//! Only the latest set is kept ([`tokio::sync::watch`]): several changes in
//! quick succession are applied once, as their end state.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, EventKind};
use notify::{RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};

use super::declarations::{DeclarationSet, read_dir};

/// Events closer together than this are one change (a swap is several).
const SETTLE: Duration = Duration::from_millis(100);

/// Watches `dir`, starting from `current` (what was applied at start), and
/// returns the receiving end of the published sets.
pub fn watch_dir(
    dir: PathBuf,
    poll_every: Duration,
    current: DeclarationSet,
) -> watch::Receiver<DeclarationSet> {
    let (publish, receiver) = watch::channel(current);
    tokio::spawn(run(dir, poll_every, publish));
    receiver
}

async fn run(dir: PathBuf, poll_every: Duration, publish: watch::Sender<DeclarationSet>) {
    let (nudge, mut nudged) = mpsc::unbounded_channel();
    // Kept alive for as long as the loop runs; without it, polling alone.
    let _watcher = match nudge_on_change(&dir, nudge) {
        Ok(watcher) => Some(watcher),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), "no filesystem events for the model config directory ({e}); polling every {poll_every:?}");
            None
        }
    };
    let mut poll = tokio::time::interval(poll_every);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = publish.closed() => return,
            _ = poll.tick() => {}
            Some(()) = nudged.recv() => {
                tokio::time::sleep(SETTLE).await;
                while nudged.try_recv().is_ok() {}
            }
        }
        match read_dir(&dir) {
            Ok(set) => {
                publish.send_if_modified(|latest| {
                    let changed = latest.digest != set.digest;
                    if changed {
                        *latest = set;
                    }
                    changed
                });
            }
            Err(e) => {
                tracing::warn!(
                    "cannot read the model config directory: {e}; keeping the models as they are"
                )
            }
        }
    }
}

/// Watches `dir`, sending on `nudge` for each event that may change what
/// it declares.
fn nudge_on_change(
    dir: &Path,
    nudge: mpsc::UnboundedSender<()>,
) -> notify::Result<notify::RecommendedWatcher> {
    let mut watcher = notify::recommended_watcher(move |event| {
        if may_change(&event) {
            let _ = nudge.send(());
        }
    })?;
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    Ok(watcher)
}

/// Anything but a read may change the directory: notify's inotify backend
/// reports opens too, and the re-read opens the directory and its files,
/// so counting them, each re-read would set off the next, ten a second for
/// good. A file closed after writing is a change.
fn may_change(event: &notify::Result<notify::Event>) -> bool {
    match event {
        Ok(event) => match event.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
            EventKind::Access(_) => false,
            _ => true,
        },
        Err(_) => true,
    }
}

/// One stream of sets from two sources (the directory and ConfigMaps read
/// through the API): their union, published again whenever either changes.
pub fn merge(
    mut first: watch::Receiver<DeclarationSet>,
    mut second: watch::Receiver<DeclarationSet>,
) -> watch::Receiver<DeclarationSet> {
    let union = |a: &watch::Receiver<DeclarationSet>, b: &watch::Receiver<DeclarationSet>| {
        a.borrow().union(&b.borrow())
    };
    let (publish, receiver) = watch::channel(union(&first, &second));
    tokio::spawn(async move {
        loop {
            tokio::select! {
                changed = first.changed() => if changed.is_err() { break },
                changed = second.changed() => if changed.is_err() { break },
            }
            if publish.send(union(&first, &second)).is_err() {
                break;
            }
        }
    });
    receiver
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    /// With the real inotify: the loop's own re-read must not set off the
    /// next one, and a new file must.
    #[test]
    fn a_re_read_is_no_change_and_a_new_file_is() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), "models: {}\n").unwrap();
        let (nudge, mut nudged) = mpsc::unbounded_channel();
        let _watcher = nudge_on_change(dir.path(), nudge).unwrap();
        let _ = read_dir(dir.path());
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            nudged.try_recv().is_err(),
            "the re-read counted as a change"
        );
        std::fs::write(dir.path().join("b.yaml"), "models: {}\n").unwrap();
        let until = Instant::now() + Duration::from_secs(5);
        while nudged.try_recv().is_err() {
            assert!(Instant::now() < until, "a new file set off no re-read");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
