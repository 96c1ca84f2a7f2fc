//! Writes that wait in the client for the next command that touches their buckets.
//!
//! A training step reads its rows, then writes them back; the next step reads again. With
//! `redis_write_behind_ms` the step's write ([`Table::insert_with_slots`],
//! [`Table::insert_together`]) returns at once and rides in front of the next command on the
//! same buckets, in the same pipeline on the same connection, where Redis keeps their order:
//! step N+1's lookup reads step N's rows in the round trip that writes them, and the write's
//! own round trip is gone.
//!
//! Every command of this process that touches a bucket with a waiting write, read or write,
//! takes that write along (or waits while another command carries it), so within the process
//! nothing ever reads around a waiting write or overtakes it. Other clients see the write
//! when it is carried, at most `redis_write_behind_ms` after it was made: a flusher thread
//! sends what waited that long, and [`flush_all`] sends everything (the Python package calls
//! it at exit). A carried write that fails is queued again, in front of anything newer, and
//! the command that carried it gets the error: nothing is dropped silently.
//!
//! Only idempotent commands carry writes: a failed pipeline is sent again as a whole, which an
//! `accum` delta must not be. Those commands send the waiting writes of their buckets first,
//! in a round trip of their own.
//!
//! [`Table::insert_with_slots`]: crate::Table::insert_with_slots
//! [`Table::insert_together`]: crate::Table::insert_together

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

use super::{Backend, Batch, Commands, OnReply, Reply, Retry, Role};
use crate::config::ConnectionMode;
use crate::error::Result;

/// How long the flusher sleeps at most when nothing is due, so that it notices its backend is
/// gone.
const FLUSHER_IDLE: Duration = Duration::from_secs(1);

/// After a failed flush, how long the flusher waits before it tries the writes again.
const FLUSH_RETRY_PAUSE: Duration = Duration::from_millis(200);

/// A backend whose writes may wait in the client (see the module docs). Every backend that
/// [`super::connect`] opens is wrapped in one; without waiting writes a command costs one
/// atomic load more.
pub(crate) struct WriteBehind {
    shared: Arc<Shared>,
}

struct Shared {
    inner: Arc<dyn Backend>,
    /// The process that queued the writes. A forked child inherits a copy of its parent's
    /// queue in the registry; sending those writes from the child could land them after
    /// newer rows the parent wrote meanwhile, so [`flush_all`] leaves them alone.
    pid: u32,
    queue: Mutex<Queue>,
    /// Signalled when a write is queued, taken or done.
    changed: Condvar,
    /// Writes queued or in flight: zero lets a command skip the queue's lock.
    outstanding: AtomicUsize,
    /// Set once the flusher thread runs.
    flusher: OnceLock<()>,
}

#[derive(Default)]
struct Queue {
    waiting: VecDeque<Waiting>,
    /// The buckets of the writes some command is carrying right now.
    in_flight: Vec<(u64, HashSet<Vec<u8>>)>,
    next_flight: u64,
}

impl Queue {
    /// Puts the waiting writes marked in `taken` (one flag per waiting write) in flight as one
    /// batch, in queue order; `keys` are the buckets the flight blocks meanwhile.
    fn launch(&mut self, taken: &[bool], keys: HashSet<Vec<u8>>) -> Flight {
        let mut batch: Option<Batch> = None;
        let mut due: Option<Instant> = None;
        let mut rest = VecDeque::with_capacity(self.waiting.len());
        for (w, &take) in self.waiting.drain(..).zip(taken) {
            if !take {
                rest.push_back(w);
                continue;
            }
            due = Some(due.map_or(w.due, |d| d.min(w.due)));
            match batch.as_mut() {
                None => batch = Some(w.batch),
                Some(b) => b.append(&w.batch),
            }
        }
        self.waiting = rest;
        let id = self.next_flight;
        self.next_flight += 1;
        self.in_flight.push((id, keys.clone()));
        Flight {
            id,
            batch: batch.expect("at least one write was taken"),
            keys,
            due: due.expect("at least one write was taken"),
            carried: 0,
        }
    }
}

/// One deferred write: its commands, the buckets they touch, and when it must be sent at the
/// latest.
struct Waiting {
    batch: Batch,
    keys: HashSet<Vec<u8>>,
    due: Instant,
}

/// Writes taken from the queue by one command.
struct Flight {
    id: u64,
    /// The taken writes' commands, in queue order.
    batch: Batch,
    keys: HashSet<Vec<u8>>,
    due: Instant,
    /// How many of `batch`'s commands are the taken writes (the rest is the command that
    /// carries them).
    carried: usize,
}

fn keys_of(cmds: &(impl Commands + ?Sized)) -> HashSet<Vec<u8>> {
    (0..cmds.len()).map(|i| cmds.key_of(i).to_vec()).collect()
}

fn lock(m: &Mutex<Queue>) -> MutexGuard<'_, Queue> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Set by [`flush_all_at_exit`]: flusher threads end instead of sending or logging.
static EXITING: AtomicBool = AtomicBool::new(false);

/// Every write-behind backend of this process, for [`flush_all`].
fn registry() -> &'static Mutex<Vec<Weak<Shared>>> {
    static REGISTRY: OnceLock<Mutex<Vec<Weak<Shared>>>> = OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

/// Sends every write still waiting in any backend of this process and waits for those in
/// flight; the first error is returned after all were tried (failed writes stay queued).
/// Writes a forked child inherited from its parent are the parent's to send, and are left
/// alone.
///
/// # Errors
///
/// The first failure of a backend's flush, as [`crate::Table::insert`] reports it; the writes
/// that failed stay queued.
pub fn flush_all() -> Result<()> {
    let all: Vec<Arc<Shared>> = registry()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter_map(Weak::upgrade)
        .filter(|s| s.pid == std::process::id())
        .collect();
    let mut first = Ok(());
    for shared in all {
        if let Err(e) = shared.flush(None)
            && first.is_ok()
        {
            first = Err(e);
        }
    }
    first
}

/// [`flush_all`] for a host process that is exiting: first stops the flusher threads, which
/// must not log (a Python host's logging bridge cannot take the GIL once the interpreter
/// finalizes), then sends every waiting write from the calling thread. Later writes wait for
/// a command to carry them or for the next flush.
///
/// # Errors
///
/// As [`flush_all`].
pub fn flush_all_at_exit() -> Result<()> {
    EXITING.store(true, Ordering::Release);
    flush_all()
}

impl WriteBehind {
    pub(crate) fn new(inner: Arc<dyn Backend>) -> Self {
        let shared = Arc::new(Shared {
            inner,
            pid: std::process::id(),
            queue: Mutex::new(Queue::default()),
            changed: Condvar::new(),
            outstanding: AtomicUsize::new(0),
            flusher: OnceLock::new(),
        });
        let mut reg = registry().lock().unwrap_or_else(|e| e.into_inner());
        reg.retain(|w| w.strong_count() > 0);
        reg.push(Arc::downgrade(&shared));
        Self { shared }
    }
}

impl Shared {
    fn idle(&self) -> bool {
        self.outstanding.load(Ordering::Acquire) == 0
    }

    /// Updates [`Shared::outstanding`]; called with the queue locked after every change.
    fn count(&self, q: &Queue) {
        self.outstanding
            .store(q.waiting.len() + q.in_flight.len(), Ordering::Release);
    }

    /// Takes the waiting writes a command on `keys` must carry (`None`: all of them): those
    /// on its buckets, and every older one on the buckets of a taken write, so that writes to
    /// one bucket stay in order. Waits while a write on any of those buckets is in flight.
    /// Returns `None` when nothing is to be carried.
    fn take(&self, keys: Option<&HashSet<Vec<u8>>>) -> Option<Flight> {
        let mut q = lock(&self.queue);
        loop {
            let mut span: HashSet<Vec<u8>> = keys.cloned().unwrap_or_default();
            let mut taken = vec![false; q.waiting.len()];
            for j in (0..q.waiting.len()).rev() {
                let w = &q.waiting[j];
                if keys.is_none() || !w.keys.is_disjoint(&span) {
                    taken[j] = true;
                    span.extend(w.keys.iter().cloned());
                }
            }
            let blocked = q.in_flight.iter().any(|(_, k)| match keys {
                None => true,
                Some(_) => !k.is_disjoint(&span),
            });
            if blocked {
                q = self.changed.wait(q).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            if !taken.contains(&true) {
                return None;
            }
            let flight = q.launch(&taken, span);
            self.count(&q);
            return Some(flight);
        }
    }

    /// Ends a flight: its writes reached Redis (`failed` is `None`), or they go back to the
    /// front of the queue, ahead of anything queued meanwhile.
    fn land(&self, id: u64, failed: Option<(Batch, HashSet<Vec<u8>>, Instant)>) {
        let mut q = lock(&self.queue);
        q.in_flight.retain(|(i, _)| *i != id);
        if let Some((batch, keys, due)) = failed {
            q.waiting.push_front(Waiting { batch, keys, due });
        }
        self.count(&q);
        drop(q);
        self.changed.notify_all();
    }

    /// Sends the waiting writes on `keys` (`None`: all, and waits for every flight) in a round
    /// trip of their own.
    fn flush(&self, keys: Option<&HashSet<Vec<u8>>>) -> Result<()> {
        while let Some(flight) = self.take(keys) {
            let result = self
                .inner
                .run_batch(&flight.batch, Role::Write, Retry::Idempotent);
            let failed = result.is_err();
            self.land(
                flight.id,
                failed.then_some((flight.batch, flight.keys, flight.due)),
            );
            result?;
            if keys.is_some() {
                break;
            }
        }
        if keys.is_none() {
            // Flights carried by other commands.
            let mut q = lock(&self.queue);
            while !q.in_flight.is_empty() {
                q = self.changed.wait(q).unwrap_or_else(|e| e.into_inner());
            }
        }
        Ok(())
    }

    /// The waiting writes a command must carry in front of `cmds`, in one pipeline with
    /// them; `None` when it runs alone. Commands that must not be sent twice send those
    /// writes first, in a round trip of their own.
    fn board(&self, cmds: &(impl Commands + ?Sized), retry: Retry) -> Result<Option<Flight>> {
        if self.idle() {
            return Ok(None);
        }
        let keys = keys_of(cmds);
        if retry != Retry::Idempotent {
            self.flush(Some(&keys))?;
            return Ok(None);
        }
        let Some(mut flight) = self.take(Some(&keys)) else {
            return Ok(None);
        };
        flight.carried = flight.batch.len();
        for i in 0..cmds.len() {
            cmds.encode(i, &mut flight.batch);
        }
        Ok(Some(flight))
    }

    /// Ends a flight that carried writes in front of a command, after `result` came back.
    fn arrive<T>(&self, flight: Flight, result: Result<T>) -> Result<T> {
        let Flight {
            id,
            mut batch,
            keys,
            due,
            carried,
        } = flight;
        let failed = result.is_err().then(|| {
            batch.truncate(carried);
            (batch, keys, due)
        });
        self.land(id, failed);
        result
    }

    /// Runs a boarded flight (carried writes, then the command's own) and returns the
    /// command's replies.
    fn run_carrying(&self, flight: Flight, retry: Retry) -> Result<Vec<Reply>> {
        let result = self.inner.run_batch(&flight.batch, Role::Write, retry);
        let carried = flight.carried;
        self.arrive(flight, result.map(|mut r| r.split_off(carried)))
    }

    /// Queues a write, starting the flusher if needed.
    fn defer(self: &Arc<Self>, batch: Batch, max_delay: Duration) {
        if batch.is_empty() {
            return;
        }
        let keys = keys_of(&batch);
        let mut q = lock(&self.queue);
        q.waiting.push_back(Waiting {
            batch,
            keys,
            due: Instant::now()
                .checked_add(max_delay)
                .unwrap_or_else(|| Instant::now() + FLUSHER_IDLE),
        });
        self.count(&q);
        drop(q);
        self.changed.notify_all();
        self.flusher.get_or_init(|| {
            let weak = Arc::downgrade(self);
            let spawned = std::thread::Builder::new()
                .name("tfra-redis-write-behind".into())
                .spawn(move || flusher(weak));
            if let Err(e) = spawned {
                // Writes are still carried by later commands and by `flush_all`; they only
                // lose the time bound.
                log::warn!(
                    target: "tfra_redis::backend",
                    "could not start the write-behind flusher thread: {e}"
                );
            }
        });
    }

    /// The waiting writes that are due: every queued write up to the last due one (older
    /// writes first, so a bucket's writes stay in order), unless one of them is in flight.
    fn take_due(&self, now: Instant) -> std::result::Result<Flight, Instant> {
        let mut q = lock(&self.queue);
        let Some(last) = q.waiting.iter().rposition(|w| w.due <= now) else {
            let next = q.waiting.iter().map(|w| w.due).min();
            return Err(next.unwrap_or(now + FLUSHER_IDLE));
        };
        let keys: HashSet<Vec<u8>> = q
            .waiting
            .iter()
            .take(last + 1)
            .flat_map(|w| w.keys.iter().cloned())
            .collect();
        if q.in_flight.iter().any(|(_, k)| !k.is_disjoint(&keys)) {
            // The command carrying it will land soon; look again then.
            return Err(now + Duration::from_millis(1));
        }
        let taken: Vec<bool> = (0..q.waiting.len()).map(|j| j <= last).collect();
        let flight = q.launch(&taken, keys);
        self.count(&q);
        Ok(flight)
    }
}

/// The flusher thread: sends writes nobody carried within their delay. Ends when its backend
/// is dropped.
fn flusher(weak: Weak<Shared>) {
    loop {
        if EXITING.load(Ordering::Acquire) {
            return;
        }
        let Some(shared) = weak.upgrade() else {
            return;
        };
        let now = Instant::now();
        match shared.take_due(now) {
            Ok(flight) => {
                let result = shared
                    .inner
                    .run_batch(&flight.batch, Role::Write, Retry::Idempotent);
                match result {
                    Ok(_) => shared.land(flight.id, None),
                    Err(e) => {
                        if EXITING.load(Ordering::Acquire) {
                            // The exit's own flush sends them, and reports a failure.
                            shared.land(flight.id, Some((flight.batch, flight.keys, flight.due)));
                            return;
                        }
                        log::warn!(
                            target: "tfra_redis::backend",
                            "sending deferred writes to {} failed, retrying: {e}",
                            shared.inner.describe()
                        );
                        let retry_at = Instant::now() + FLUSH_RETRY_PAUSE;
                        shared.land(flight.id, Some((flight.batch, flight.keys, retry_at)));
                    }
                }
            }
            Err(next) => {
                let wait = next
                    .saturating_duration_since(now)
                    .min(FLUSHER_IDLE)
                    .max(Duration::from_micros(100));
                let q = lock(&shared.queue);
                // A write queued meanwhile may be due sooner: `defer` signals.
                let _ = shared
                    .changed
                    .wait_timeout(q, wait)
                    .unwrap_or_else(|e| e.into_inner());
            }
        }
    }
}

impl Backend for WriteBehind {
    fn run_batch(&self, batch: &Batch, role: Role, retry: Retry) -> Result<Vec<Reply>> {
        let s = &self.shared;
        match s.board(batch, retry)? {
            Some(flight) => s.run_carrying(flight, retry),
            None => s.inner.run_batch(batch, role, retry),
        }
    }

    fn run_each(&self, batch: &Batch, role: Role, on_reply: &mut OnReply<'_>) -> Result<()> {
        let s = &self.shared;
        let Some(flight) = s.board(batch, Retry::Idempotent)? else {
            return s.inner.run_each(batch, role, on_reply);
        };
        let carried = flight.carried;
        // The carried writes' replies are checked by the backend (an error reply fails the
        // call); only the command's own replies go to the caller.
        let result = s
            .inner
            .run_each(&flight.batch, Role::Write, &mut |i, reply| {
                if i < carried {
                    Ok(())
                } else {
                    on_reply(i - carried, reply)
                }
            });
        s.arrive(flight, result)
    }

    fn run_deferred(
        &self,
        cmds: &dyn Commands,
        scratch: &mut Batch,
        role: Role,
        retry: Retry,
    ) -> Result<Vec<Reply>> {
        let s = &self.shared;
        match s.board(cmds, retry)? {
            Some(flight) => s.run_carrying(flight, retry),
            None => s.inner.run_deferred(cmds, scratch, role, retry),
        }
    }

    fn defer(&self, batch: Batch, max_delay: Duration) -> Result<()> {
        self.shared.defer(batch, max_delay);
        Ok(())
    }

    fn flush_deferred(&self) -> Result<()> {
        self.shared.flush(None)
    }

    fn scan_match(&self, pattern: &[u8]) -> Result<Vec<Vec<u8>>> {
        // A waiting write may create a bucket the scan should list.
        if !self.shared.idle() {
            self.shared.flush(None)?;
        }
        self.shared.inner.scan_match(pattern)
    }

    fn master_slot_ranges(&self) -> Result<Vec<(u16, u16)>> {
        self.shared.inner.master_slot_ranges()
    }

    fn mode(&self) -> ConnectionMode {
        self.shared.inner.mode()
    }

    fn describe(&self) -> String {
        self.shared.inner.describe()
    }

    fn release_inherited(&self) {
        self.shared.inner.release_inherited()
    }
}
