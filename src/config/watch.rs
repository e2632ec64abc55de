//! Notices changes to the model configuration directory and publishes each
//! new [`DeclarationSet`]: on filesystem events on the directory — kubelet's
//! `..data` symlink swap changes no visible file, but it creates and renames
//! entries in the directory itself — and, as a fallback for filesystems
//! without events, on a periodic re-read compared by digest.
//!
//! Only the latest set is kept ([`tokio::sync::watch`]): several changes in
//! quick succession are applied once, as their end state.

use std::path::PathBuf;
use std::time::Duration;

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
    let _watcher = match notify::recommended_watcher(
        move |_event: notify::Result<notify::Event>| {
            let _ = nudge.send(());
        },
    )
    .and_then(|mut w| w.watch(&dir, RecursiveMode::NonRecursive).map(|()| w))
    {
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
