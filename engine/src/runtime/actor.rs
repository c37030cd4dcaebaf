//! The partition actor: one tokio task per partition running the group commit (take a
//! batch, apply it, write one WAL frame, ask for durability, then release what it
//! produced, strictly in batch order). See the module docs of `runtime` for the loop.

use super::*;

/// Hub time carried by a command, if any.
pub(super) fn command_time(command: &Command) -> Option<TimestampMs> {
    match command {
        Command::Prepare { now_ms, .. }
        | Command::Fulfil { now_ms, .. }
        | Command::Reject { now_ms, .. }
        | Command::Tick { now_ms }
        | Command::Admin { now_ms, .. } => Some(*now_ms),
        Command::Peer { .. } => None,
    }
}

pub(super) struct Actor {
    pub(super) partition: u32,
    pub(super) store: Arc<dyn Storage>,
    /// Rules out most archive lookups for new transfer ids (see `filter.rs`).
    pub(super) filter: ArchiveFilter,
    /// The filter filled from the archive at start arrives here.
    pub(super) filter_loaded: Option<oneshot::Receiver<ArchiveFilter>>,
    /// Finished transfers recorded since start, replayed into the loaded filter.
    pub(super) filter_pending: Vec<(u64, i64)>,
    pub(super) epoch: u64,
    pub(super) shared: Arc<Shared>,
    pub(super) state: PartitionState,
    /// Messages sent whose receiver has not yet made them durable (re-sent after a crash).
    pub(super) unconfirmed: BTreeMap<(u32, u64), Outgoing>,
    /// Released results not yet acknowledged by the event consumer (see `outbox`).
    pub(super) outbox: Outbox,
    pub(super) acks: Arc<Acks>,
    /// Finished transfers not yet known to be archived, for duplicate checks and GET.
    pub(super) finished_cache: HashMap<TransferId, FinishedTransfer>,
    pub(super) finished_order: VecDeque<(u64, Vec<TransferId>)>,
    pub(super) events: mpsc::Sender<Delivery>,
    pub(super) client_rx: mpsc::Receiver<ClientRequest>,
    pub(super) peer_rx: mpsc::Receiver<Command>,
    pub(super) query_rx: mpsc::Receiver<Query>,
    /// Turns `true` when the hub shuts down.
    pub(super) stop: tokio::sync::watch::Receiver<bool>,
    pub(super) last_snapshot_batch: u64,
}

/// A batch applied and written, waiting for its fsync before anything of it is released.
pub(super) struct InFlight {
    pub(super) done: oneshot::Receiver<Result<u64, String>>,
    pub(super) batch_seq: u64,
    pub(super) count: usize,
    pub(super) output: crate::machine::Output,
    pub(super) replies: Vec<oneshot::Sender<()>>,
    /// Read answers computed from a state that includes this batch.
    pub(super) answers: Vec<Answer>,
    /// How far this partition had applied each sender's messages once this batch was
    /// applied (`inbound` watermarks): published as confirmations at its release, never
    /// the live state, which may include messages of later batches not yet durable.
    pub(super) confirms: Vec<(u32, u64)>,
    pub(super) requested: std::time::Instant,
}

/// A query answer held back until the state it was read from is durable.
pub(super) enum Answer {
    Transfer(
        oneshot::Sender<Result<Option<TransferView>, ErrorCode>>,
        Result<Option<TransferView>, ErrorCode>,
    ),
    Account(oneshot::Sender<Option<SliceFigures>>, Option<SliceFigures>),
}

impl Answer {
    fn send(self) {
        match self {
            Answer::Transfer(reply, view) => {
                let _ = reply.send(view);
            }
            Answer::Account(reply, figures) => {
                let _ = reply.send(figures);
            }
        }
    }
}

/// Batches applied ahead of durability, per partition: batch k+1 is applied while batch
/// k is being synced.
pub(super) const PIPELINE_DEPTH_MAX: usize = 2;
/// An idle actor wakes at least this often (to offer results the event channel had no
/// room for).
pub(super) const IDLE_TURN_MS: u64 = 50;

impl Actor {
    pub(super) async fn run(mut self) {
        // Re-send what the receivers may not have made durable before the restart.
        for message in self.unconfirmed.values() {
            if let Err(e) = self.deliver(message) {
                self.stop(&e);
                return;
            }
        }
        let batch_max = self.shared.limits.batch_size_max.max(1);
        let mut in_flight: VecDeque<InFlight> = VecDeque::new();
        loop {
            let stopping = self.shared.shutting_down.load(Ordering::Relaxed);
            self.dispatch_events();
            let mut commands: Vec<Command> = Vec::new();
            let mut replies: Vec<oneshot::Sender<()>> = Vec::new();
            while commands.len() < batch_max {
                match self.client_rx.try_recv() {
                    Ok(request) => {
                        commands.push(request.command);
                        replies.extend(request.reply);
                    }
                    Err(_) => break,
                }
            }
            while let Ok(query) = self.query_rx.try_recv() {
                let answer = self.answer(query);
                match in_flight.back_mut() {
                    Some(last) => last.answers.push(answer),
                    None => answer.send(),
                }
            }
            if commands.is_empty() {
                if let Some(oldest) = in_flight.pop_front() {
                    if let Err(e) = self.release(oldest).await {
                        self.stop(&e);
                        return;
                    }
                    continue;
                }
                if stopping {
                    break;
                }
                // Nothing to do: sleep until something arrives.
                tokio::select! {
                    Some(command) = self.peer_rx.recv() => commands.push(command),
                    Some(request) = self.client_rx.recv() => {
                        commands.push(request.command);
                        replies.extend(request.reply);
                    }
                    Some(query) = self.query_rx.recv() => { self.answer(query).send(); continue; }
                    _ = self.stop.changed() => continue,
                    // Results the event channel had no room for are offered again.
                    _ = tokio::time::sleep(Duration::from_millis(IDLE_TURN_MS)) => continue,
                }
                self.wait_for_more(&mut commands, &mut replies, batch_max)
                    .await;
            }
            // Peer messages go first in the batch, and are taken *after* the client
            // commands: a message that was in the lane before a client sent its command
            // (say, the headroom return of a credit whose callback the client saw) is then
            // always applied before that command.
            let mut peers = Vec::new();
            while peers.len() < batch_max {
                match self.peer_rx.try_recv() {
                    Ok(command) => peers.push(command),
                    Err(_) => break,
                }
            }
            if !peers.is_empty() {
                peers.append(&mut commands);
                commands = peers;
            }
            if commands.is_empty() {
                continue;
            }
            match self.stage(commands, replies).await {
                Ok(entry) => in_flight.push_back(entry),
                Err(e) => {
                    self.stop(&e);
                    return;
                }
            }
            let snapshot_due = self.state.batch_seq - self.last_snapshot_batch
                >= self.shared.limits.snapshot_every_batches;
            while in_flight.len() >= PIPELINE_DEPTH_MAX || (snapshot_due && !in_flight.is_empty()) {
                let oldest = in_flight.pop_front().expect("not empty");
                if let Err(e) = self.release(oldest).await {
                    self.stop(&e);
                    return;
                }
            }
            if snapshot_due {
                if let Err(e) = self.snapshot() {
                    self.stop(&e);
                    return;
                }
            }
        }
    }

    /// Group commit: wait up to `batch_wait_us` for more commands after the first.
    async fn wait_for_more(
        &mut self,
        commands: &mut Vec<Command>,
        replies: &mut Vec<oneshot::Sender<()>>,
        batch_max: usize,
    ) {
        let wait = Duration::from_micros(self.shared.limits.batch_wait_us);
        let deadline = tokio::time::Instant::now() + wait;
        while commands.len() < batch_max {
            match self.client_rx.try_recv() {
                Ok(request) => {
                    commands.push(request.command);
                    replies.extend(request.reply);
                    continue;
                }
                Err(_) if tokio::time::Instant::now() >= deadline => break,
                Err(_) => tokio::task::yield_now().await,
            }
        }
    }

    fn answer(&self, query: Query) -> Answer {
        match query {
            Query::Transfer { id, reply } => {
                let view = if let Some(open) = self.state.transfers.get(&id) {
                    Ok(Some(TransferView {
                        transfer_id: id,
                        payer: open.parties.payer,
                        payee: open.parties.payee,
                        state: if open.reserved {
                            TransferState::Reserved
                        } else {
                            TransferState::Received
                        },
                        fulfilment: None,
                        completed_ms: None,
                    }))
                } else {
                    match self.lookup_finished(&id, None) {
                        Ok(record) => Ok(record.map(|record| TransferView {
                            transfer_id: id,
                            payer: record.parties.payer,
                            payee: record.parties.payee,
                            state: record.state,
                            fulfilment: record.fulfilment,
                            completed_ms: record.completed_ms,
                        })),
                        Err(e) => {
                            error!(partition = self.partition, error = %e, "reading an archived transfer failed");
                            Err(ErrorCode::Internal)
                        }
                    }
                };
                Answer::Transfer(reply, view)
            }
            Query::Account { account, reply } => {
                let mut figures = SliceFigures {
                    active: self
                        .state
                        .participants
                        .get(&account.fsp)
                        .is_some_and(|f| f.active),
                    ..SliceFigures::default()
                };
                if let Some(entry) = self.state.accounts.get(&account) {
                    figures.known = true;
                    figures.position = entry.slice.position;
                    figures.reserved = entry.slice.reserved;
                    figures.headroom = entry.slice.headroom;
                    figures.bank = entry.bank.as_ref().map(|b| BankFigures {
                        ndc: b.ndc,
                        cover: b.cover(),
                        limit: b.limit(),
                        base_position: b.base_position,
                        bank: b.bank,
                        limits_set: b.limits_set,
                    });
                }
                Answer::Account(reply, Some(figures))
            }
        }
    }

    /// The archived record of a transfer that is not open here, if any. `now_ms` is the
    /// hub time of the command asking (the filter only speaks for the retention window).
    fn lookup_finished(
        &self,
        id: &TransferId,
        now_ms: Option<TimestampMs>,
    ) -> Result<Option<FinishedTransfer>, EngineError> {
        if let Some(record) = self.finished_cache.get(id) {
            return Ok(Some(record.clone()));
        }
        if let Some(now_ms) = now_ms {
            if !self
                .filter
                .might_contain(id.route_hash(), now_ms, self.shared.limits.retention_ms)
            {
                return Ok(None);
            }
        }
        self.store.finished(id)
    }

    /// Remembers finished transfers in the filter (and for the loaded one, if pending).
    fn filter_insert(&mut self, records: &[FinishedTransfer]) {
        if let Some(loading) = self.filter_loaded.as_mut() {
            match loading.try_recv() {
                Ok(mut loaded) => {
                    for (hash, finished_ms) in self.filter_pending.drain(..) {
                        loaded.insert(hash, finished_ms);
                    }
                    loaded.mark_complete();
                    self.filter = loaded;
                    self.filter_loaded = None;
                }
                Err(oneshot::error::TryRecvError::Empty) => {}
                Err(oneshot::error::TryRecvError::Closed) => {
                    // The loader failed (it logged why): keep going to disk for every check.
                    self.filter_loaded = None;
                    self.filter_pending.clear();
                }
            }
        }
        for record in records {
            let hash = record.parties.transfer_id.route_hash();
            self.filter.insert(hash, record.finished_ms);
            if self.filter_loaded.is_some() {
                self.filter_pending.push((hash, record.finished_ms));
            }
        }
    }

    /// Applies a batch, writes its WAL record and asks for durability (without waiting).
    async fn stage(
        &mut self,
        commands: Vec<Command>,
        replies: Vec<oneshot::Sender<()>>,
    ) -> Result<InFlight, EngineError> {
        let count = commands.len();
        let mut inputs = Vec::with_capacity(count);
        for command in commands {
            if matches!(command, Command::Tick { .. }) {
                self.shared.stats[self.partition as usize]
                    .tick_pending
                    .store(false, Ordering::Release);
            }
            let prior = match command.transfer_id() {
                Some(id) if !self.state.is_open(&id) => {
                    self.lookup_finished(&id, command_time(&command))?
                }
                _ => None,
            };
            inputs.push(Input { command, prior });
        }
        // The WAL record is encoded before applying (applying consumes the input) without
        // cloning it, and written after: a batch that trips an invariant never reaches disk.
        let batch_seq = self.state.batch_seq + 1;
        let body = encode_batch(&WalRecordRef {
            batch_seq,
            epoch: self.epoch,
            inputs: inputs.iter().map(|i| (&i.command, &i.prior)).collect(),
        })?;
        let output = self.state.apply_batch(inputs);
        assert_eq!(
            self.state.batch_seq, batch_seq,
            "batch numbering out of step"
        );
        self.store
            .append_encoded(self.partition, batch_seq, &body)?;
        if cfg!(debug_assertions) {
            self.state.audit();
        }
        self.filter_insert(&output.finished);
        // Finished transfers stay readable (GET, duplicates) until the archiver has them.
        for record in &output.finished {
            self.finished_cache
                .insert(record.parties.transfer_id, record.clone());
        }
        let (reply, done) = oneshot::channel();
        self.shared
            .syncer
            .send(SyncMsg::Sync(reply))
            .await
            .map_err(|_| EngineError::ShuttingDown)?;
        Ok(InFlight {
            done,
            batch_seq: self.state.batch_seq,
            count,
            output,
            replies,
            answers: Vec::new(),
            confirms: self
                .state
                .inbound
                .iter()
                .map(|(from, inbound)| (*from, inbound.watermark))
                .collect(),
            requested: std::time::Instant::now(),
        })
    }

    /// Waits for a staged batch to be durable, then releases everything it produced.
    async fn release(&mut self, entry: InFlight) -> Result<(), EngineError> {
        let InFlight {
            done,
            batch_seq,
            count,
            output,
            replies,
            answers,
            confirms,
            requested,
        } = entry;
        done.await
            .map_err(|_| EngineError::ShuttingDown)?
            .map_err(EngineError::Storage)?;
        self.shared
            .flush_latency_us_total
            .fetch_add(requested.elapsed().as_micros() as u64, Ordering::Relaxed);

        // Durable: release everything.
        let stats = &self.shared.stats[self.partition as usize];
        stats.committed_batch.store(batch_seq, Ordering::Relaxed);
        stats
            .applied_commands
            .fetch_add(count as u64, Ordering::Relaxed);
        stats.last_batch_size.store(count as u64, Ordering::Relaxed);
        stats
            .parked
            .store(self.state.parked_count, Ordering::Relaxed);
        self.shared.batches.fetch_add(1, Ordering::Relaxed);
        self.shared
            .denials
            .fetch_add(output.denials.len() as u64, Ordering::Relaxed);
        self.publish_confirmations(&confirms);
        for message in output.messages {
            self.deliver(&message)?;
            self.unconfirmed.insert((message.to, message.seq), message);
        }
        if !output.finished.is_empty() {
            let ids: Vec<TransferId> = output
                .finished
                .iter()
                .map(|r| r.parties.transfer_id)
                .collect();
            self.finished_order.push_back((batch_seq, ids));
            let job = ArchiveJob {
                partition: self.partition,
                batch_seq,
                records: output.finished,
            };
            // A full archiver queue slows this partition down instead of growing memory.
            self.shared
                .archiver
                .send(ArchiveMsg::Job(job))
                .await
                .map_err(|_| EngineError::Storage("archiver stopped".into()))?;
        }
        for reply in replies {
            let _ = reply.send(());
        }
        for answer in answers {
            answer.send();
        }
        let mut shed = 0;
        for event in output.events {
            if let Event::AdminDone {
                request_id,
                code,
                message,
            } = &event
            {
                if let Some(waiter) = lock(&self.shared.admin_waiters).remove(request_id) {
                    let _ = waiter.send((*code, message.clone()));
                }
                continue;
            }
            shed += self.outbox.push(event);
        }
        if shed > 0 {
            self.shared.events_shed.fetch_add(shed, Ordering::Relaxed);
            warn!(
                partition = self.partition,
                shed,
                bound = self.shared.limits.outbox_events_max,
                "results shed: the event consumer is too far behind"
            );
        }
        self.dispatch_events();
        self.trim_finished_cache();
        // Over its bound, the cache waits for the archiver instead of growing: this
        // partition slows down (its mailbox fills and answers "overloaded").
        while self.finished_cache.len() > self.shared.limits.finished_cache_max {
            tokio::time::sleep(Duration::from_millis(ARCHIVE_SYNC_INTERVAL_MS / 10)).await;
            self.trim_finished_cache();
        }
        Ok(())
    }

    /// Records why this partition stops; its mailbox closes when the actor returns.
    fn stop(&self, error: &EngineError) {
        error!(partition = self.partition, error = %error, "partition stopped");
        *lock(&self.shared.stats[self.partition as usize].stopped) = Some(error.to_string());
    }

    /// Sends a message into the receiver's log (its peer lane). A closed lane (a stopped
    /// receiver) keeps the message in `unconfirmed`, re-sent after a restart.
    fn deliver(&self, message: &Outgoing) -> Result<(), EngineError> {
        let command = Command::Peer {
            from: self.partition,
            seq: message.seq,
            message: message.message.clone(),
        };
        match self.shared.peers[message.to as usize].try_send(command) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => Err(EngineError::Overflow(format!(
                "peer lane of partition {} is over its bound of {} messages",
                message.to, self.shared.limits.peer_lane_capacity
            ))),
        }
    }

    /// Hands released results to the event consumer, as many as its channel takes now;
    /// the rest stay in the outbox for the next turn (the ledger never waits for it).
    fn dispatch_events(&mut self) {
        outbox::take_acks(&mut self.outbox, &self.acks);
        while let Some((seq, event)) = self.outbox.next_to_dispatch() {
            match self.events.try_reserve() {
                Ok(permit) => {
                    permit.send(outbox::delivery(self.partition, seq, event, &self.acks));
                    self.outbox.dispatched(seq);
                }
                Err(mpsc::error::TrySendError::Full(())) => break,
                Err(mpsc::error::TrySendError::Closed(())) => {
                    // Nobody consumes results (the consumer is gone): nothing to keep.
                    self.outbox.dispatched(seq);
                    self.outbox.ack(seq);
                }
            }
        }
        self.shared.stats[self.partition as usize]
            .outbox_pending
            .store(self.outbox.pending(), Ordering::Relaxed);
    }

    /// Tells senders how far this partition has durably applied their messages:
    /// `confirms` are the watermarks as of the batch just made durable.
    fn publish_confirmations(&mut self, confirms: &[(u32, u64)]) {
        let n = self.shared.partitions as usize;
        for (from, watermark) in confirms {
            self.shared.confirmed[self.partition as usize * n + *from as usize]
                .store(*watermark, Ordering::Release);
        }
        let confirmed = &self.shared.confirmed;
        let me = self.partition as usize;
        self.unconfirmed
            .retain(|(to, seq), _| *seq > confirmed[*to as usize * n + me].load(Ordering::Acquire));
    }

    /// Drops cached finished transfers once the archiver has made them durable.
    fn trim_finished_cache(&mut self) {
        let archived = self.shared.archived_upto[self.partition as usize].load(Ordering::Acquire);
        while let Some((batch, _)) = self.finished_order.front() {
            if *batch > archived {
                break;
            }
            let (_, ids) = self.finished_order.pop_front().expect("front exists");
            for id in ids {
                self.finished_cache.remove(&id);
            }
        }
    }

    /// Writes a snapshot and drops the WAL before it.
    fn snapshot(&mut self) -> Result<(), EngineError> {
        let snapshot = SnapshotRecord {
            batch_seq: self.state.batch_seq,
            state: self.state.snapshot_bytes(),
            unconfirmed: self.unconfirmed.values().cloned().collect(),
            // Finished transfers the archiver may not have written yet: recovery writes them.
            unarchived: self.finished_cache.values().cloned().collect(),
            outbox: self.outbox.pending_events(),
            next_event_seq: self.outbox.next_seq(),
        };
        self.store.write_snapshot(self.partition, &snapshot)?;
        // Full queue: skip; the next snapshot's trim covers these records too.
        let _ = self.shared.trimmer.try_send(TrimMsg::Trim {
            partition: self.partition,
            upto: snapshot.batch_seq,
        });
        self.last_snapshot_batch = snapshot.batch_seq;
        Ok(())
    }
}
