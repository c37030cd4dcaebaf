//! The engine's background threads: the syncer (one WAL fdatasync per round for every
//! partition that asked meanwhile), the trimmer (deletes WAL segments behind durable
//! snapshots), the archiver (writes finished transfers off the critical path), the
//! compactor (merges archive runs, drops expired ones) and the filter loader. Each is a
//! plain thread fed by a bounded channel; none of them holds a partition's state.

use super::*;

/// Lowers the calling thread's CPU priority to [`MAINTENANCE_NICE`] (on Linux nice is per
/// thread). Failing to is harmless: the thread then competes at normal priority.
pub(super) fn lower_priority_of_this_thread() {
    let tid = rustix::thread::gettid();
    if let Err(e) = rustix::process::setpriority_process(Some(tid), MAINTENANCE_NICE) {
        tracing::warn!(error = %e, "could not lower a maintenance thread's priority");
    }
}

/// A request to the trimmer.
pub(super) enum TrimMsg {
    /// Partition p's WAL records up to and including this batch are in a snapshot.
    Trim {
        partition: u32,
        upto: u64,
    },
    Exit,
}

/// Deletes WAL segments covered by snapshots. Only garbage collection: recovery reads the
/// WAL after its snapshot's batch, so a segment left behind (trim skipped, crash before
/// it) is never read past that point, and `truncate_batches` makes the snapshots durable
/// before it deletes anything.
pub(super) fn run_trimmer(store: Arc<dyn Storage>, mut requests: mpsc::Receiver<TrimMsg>) {
    lower_priority_of_this_thread();
    while let Some(TrimMsg::Trim { partition, upto }) = requests.blocking_recv() {
        if let Err(e) = store.truncate_batches(partition, upto) {
            error!(partition, error = %e, "deleting WAL segments behind a snapshot failed");
        }
    }
}

/// A request to the syncer.
pub(super) enum SyncMsg {
    Sync(oneshot::Sender<Result<u64, String>>),
    /// Sync one last time and end the thread (structured shutdown).
    Exit,
}

/// Group commit across partitions: every request that arrived while the previous sync ran
/// is covered by the next one.
pub(super) fn run_syncer(store: Arc<dyn Storage>, mut requests: mpsc::Receiver<SyncMsg>) {
    let mut exiting = false;
    while !exiting {
        let Some(first) = requests.blocking_recv() else {
            return;
        };
        let mut waiting = Vec::new();
        for message in std::iter::once(first).chain(std::iter::from_fn(|| requests.try_recv().ok()))
        {
            match message {
                SyncMsg::Sync(reply) => waiting.push(reply),
                SyncMsg::Exit => exiting = true,
            }
        }
        let result = store
            .sync()
            .map(|_| store.fsyncs())
            .map_err(|e| e.to_string());
        for reply in waiting {
            let _ = reply.send(result.clone());
        }
    }
}

/// Finished transfers of one batch, for the archiver.
pub(super) struct ArchiveJob {
    pub(super) partition: u32,
    pub(super) batch_seq: u64,
    pub(super) records: Vec<FinishedTransfer>,
    pub(super) ledger: std::sync::Arc<Vec<crate::ledger::Entry>>,
}

/// A message to the archiver.
pub(super) enum ArchiveMsg {
    Job(ArchiveJob),
    /// Write and sync what is pending, then end the thread (structured shutdown).
    Exit,
}

pub(super) fn run_archiver(
    store: Arc<dyn Storage>,
    mut jobs: mpsc::Receiver<ArchiveMsg>,
    shared: std::sync::Weak<Shared>,
) {
    let mut done: Vec<(u32, u64)> = Vec::new();
    let mut last_sync = std::time::Instant::now();
    let mut exiting = false;
    loop {
        // Write jobs as they come; make the archive durable at most every
        // ARCHIVE_SYNC_INTERVAL_MS (many small syncs starve the group commit's IO), and
        // only then tell the partitions, which drop their in-memory copies on that word.
        let wait =
            Duration::from_millis(ARCHIVE_SYNC_INTERVAL_MS).saturating_sub(last_sync.elapsed());
        let message = if exiting {
            None
        } else {
            match jobs.try_recv() {
                Ok(message) => Some(message),
                Err(mpsc::error::TryRecvError::Empty) if done.is_empty() => jobs.blocking_recv(),
                Err(mpsc::error::TryRecvError::Empty) => {
                    std::thread::sleep(wait.min(Duration::from_millis(1)));
                    None
                }
                Err(mpsc::error::TryRecvError::Disconnected) => Some(ArchiveMsg::Exit),
            }
        };
        match message {
            Some(ArchiveMsg::Job(job)) => {
                if let Err(e) = store
                    .archive(&job.records)
                    .and_then(|()| store.ledger_add(&job.ledger))
                {
                    error!(error = %e, "archiving finished transfers failed; stopping the archiver");
                    return;
                }
                done.push((job.partition, job.batch_seq));
            }
            Some(ArchiveMsg::Exit) => exiting = true,
            None => {}
        }
        let due = last_sync.elapsed() >= Duration::from_millis(ARCHIVE_SYNC_INTERVAL_MS);
        if !done.is_empty() && (due || exiting || done.len() >= ARCHIVE_JOBS_PER_SYNC_MAX) {
            last_sync = std::time::Instant::now();
            if let Err(e) = store.sync_archive() {
                error!(error = %e, "syncing the archive failed; stopping the archiver");
                return;
            }
            if let Some(shared) = shared.upgrade() {
                for (partition, batch_seq) in done.drain(..) {
                    shared.archived_upto[partition as usize].store(batch_seq, Ordering::Release);
                }
            }
            done.clear();
        }
        if exiting {
            return;
        }
    }
}

/// Archive upkeep off the critical path: merges runs (so lookups probe few of them) and
/// drops runs past retention, one step at a time, until `stop` is set; every
/// [`LEDGER_PRUNE_INTERVAL_MS`] it also drops position ledger entries past theirs.
pub(super) fn run_compactor(
    store: Arc<dyn Storage>,
    stop: Arc<AtomicBool>,
    retention_ms: i64,
    ledger_retention_ms: i64,
) {
    lower_priority_of_this_thread();
    let mut last_prune: Option<std::time::Instant> = None;
    while !stop.load(Ordering::Relaxed) {
        if last_prune.is_none_or(|t| t.elapsed() >= Duration::from_millis(LEDGER_PRUNE_INTERVAL_MS))
        {
            last_prune = Some(std::time::Instant::now());
            if let Err(e) = store.prune_ledger(now_ms().saturating_sub(ledger_retention_ms)) {
                // Entries past retention stay readable, only taking disk; say so.
                error!(error = %e, "pruning the position ledger failed");
            }
        }
        match store.maintain_archive(now_ms() - retention_ms, &stop) {
            Ok(true) => {}
            Ok(false) => std::thread::sleep(Duration::from_millis(COMPACTOR_IDLE_MS)),
            Err(e) => {
                // Lookups stay correct with unmerged runs, only slower; say so and stop.
                error!(error = %e, "archive maintenance failed; runs are no longer merged");
                return;
            }
        }
    }
}

/// Fills one filter per partition from the archive (transfers inside retention only) and
/// hands each to its actor.
pub(super) fn load_filters(
    store: Arc<dyn Storage>,
    senders: Vec<oneshot::Sender<ArchiveFilter>>,
    partitions: u32,
    filter_bytes: usize,
    retention_ms: i64,
) {
    lower_priority_of_this_thread();
    let mut filters: Vec<ArchiveFilter> = (0..partitions)
        .map(|_| ArchiveFilter::new(filter_bytes))
        .collect();
    let oldest_ms = now_ms() - retention_ms;
    let mut records = Vec::new();
    let result = store.for_each_finished(&mut |hash, finished_ms| {
        if finished_ms >= oldest_ms {
            records.push((finished_ms, hash));
        }
    });
    if let Err(e) = result {
        error!(error = %e, "filling the archive filters failed; duplicate checks go to disk");
        return; // dropping the senders tells the actors
    }
    // Oldest first, so that the filters' generations follow finishing time.
    records.sort_unstable();
    for (finished_ms, hash) in records {
        filters[(hash % u64::from(partitions)) as usize].insert(hash, finished_ms);
    }
    for (filter, sender) in filters.into_iter().zip(senders) {
        let _ = sender.send(filter);
    }
}
