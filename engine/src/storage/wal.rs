//! The write-ahead log: one append-only file log shared by every partition of the process.
//!
//! Each group commit of a partition appends one frame; the syncer's `sync` makes every frame
//! written so far durable with one `fdatasync`, whatever the number of partitions. Frames
//! live in segment files (`wal/{index:016x}.wal`) of about [`SEGMENT_BYTES_MAX`]; a segment
//! is deleted once every partition has a durable snapshot past all its frames in it. Any
//! other file in `wal/` (an editor's backup, `lost+found`) is ignored with a warning that
//! names it; a file named exactly like a segment is checked like one.
//!
//! A partition that has stopped (a corrupt record, a failed recovery) never snapshots, so
//! it would hold every segment forever and fill the disk for all the others.
//! [`Wal::set_aside`] copies its frames past its snapshot, byte for byte (damaged ones
//! too, so the damage is still reported), into `wal/held/{p}`: written as a `.tmp` file,
//! fdatasynced, renamed, directory synced. Trimming then counts the partition as covered
//! up to the last frame held; [`Wal::read`] returns the held frames, then newer ones from
//! the segments, so a restart after the repair recovers the partition unchanged. The held
//! file goes when the partition's own snapshot covers it. A held file was synced whole
//! before it was used, so its frames need no durable-offset reasoning.
//!
//! Frame layout, format version [`FORMAT_VERSION`] (little endian, 32-byte header):
//!
//! ```text
//! magic u32 ("LAW2") | partition u32 | batch_seq u64 | durable u64 | body_len u32 | crc32 u32 | body
//! ```
//!
//! The magic's last byte is the format version. `durable` is how many bytes of this
//! segment the last *completed* `fdatasync` had made durable when the frame was appended.
//! The CRC covers partition, batch_seq, durable, body_len and the body. A segment of
//! format version 1 (magic "LAW1", no `durable`) is refused at open with an error naming
//! the file: read as version 2 every field after `batch_seq` would be misplaced.
//!
//! Why frames carry `durable`: after a power loss, the part of the newest segment written
//! since its last completed `fdatasync` can come back as any mix of lost and surviving
//! pages, so garbage at offset X may be followed by intact frames. None of those bytes was
//! ever acknowledged. Damage to bytes that *were* synced (the disk failing) looks the same
//! on its own; the difference is what the frames after it say. A frame appended after the
//! sync that covered X carries a `durable` above X.
//!
//! Invariants:
//! * Only the newest segment is written to. A segment is made durable (`fdatasync`) before
//!   its successor is created, and the directory is synced after a creation, so after a
//!   crash every older segment is whole: damage there is always refused.
//! * A frame never claims more than is durable: `durable` is advanced only after an
//!   `fdatasync` returns, to the length the segment had when that `fdatasync` began.
//! * At open, damage at offset X of the newest segment (an unreadable header, or a frame
//!   that fails its CRC) is cut off together with everything after it if no intact frame
//!   after X has `durable > X`: all of it was written after the last completed sync (a torn
//!   tail is the simplest case). Otherwise it is real damage: an unreadable header refuses
//!   the store, a readable header with a bad CRC stops its partition when it is read; the
//!   error names the file and byte offset, and nothing is cut. What survives open is
//!   synced once before any new frame says it is durable (a process crash can leave it in
//!   the page cache only).
//! * Known limit: if the disk damages a synced frame and no frame was appended after the
//!   sync that covered it, nothing on disk tells the damage from a lost page, and it is
//!   cut like one. That loses acknowledged batches only when the disk loses data it had
//!   reported durable, and only in the last sync round before the stop.
//! * After a failed write or `fdatasync` the log refuses every further append and sync,
//!   until it is reopened, with the first error and when it happened ([`Wal::failed`]).
//!   A partial frame followed by later frames would look like corruption after a restart;
//!   and Linux reports a writeback error to one `fdatasync` only, marks the pages clean
//!   and lets the next `fdatasync` succeed although the data never reached the disk, so a
//!   sync after a failed one proves nothing and must not release a single frame.

use crate::EngineError;
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

pub use crate::limits::{BODY_BYTES_MAX, SEGMENT_BYTES_MAX};

/// The frame format version, also the last byte of every frame's magic.
pub const FORMAT_VERSION: u32 = 2;
/// "LAW2" read little endian: 'L','A','W','2'.
const MAGIC: u32 = u32::from_le_bytes(*b"LAW2");
/// The magic of format version 1 (frames without the durable offset), refused at open.
const MAGIC_V1: [u8; 4] = *b"LAW1";
const HEADER_BYTES: usize = 32;

/// One segment file and, per partition, the last batch sequence it holds (0: none).
struct Segment {
    index: u64,
    file: Arc<File>,
    len: u64,
    /// Bytes from the start known durable: how far the last completed `fdatasync` of
    /// this segment reached. Every frame appended carries it.
    durable: u64,
    last_seq: Vec<u64>,
}

struct Inner {
    /// Oldest first; the last one is the segment being appended to.
    segments: VecDeque<Segment>,
    /// Per partition, the batch sequence its durable snapshot covers.
    covered: Vec<u64>,
    /// Set by a failed write: nothing more is written or acknowledged.
    failed: Option<String>,
    /// Per partition, the last batch sequence in its held file (0: none): its frames up
    /// to there are set aside (see [`Wal::set_aside`]), so trimming does not wait for them.
    held_upto: Vec<u64>,
}

pub struct Wal {
    dir: PathBuf,
    partitions: u32,
    segment_bytes_max: u64,
    inner: Mutex<Inner>,
    /// Test-only fault: the next fdatasync fails without syncing (see
    /// [`Wal::inject_sync_failure`]). Off unless a test arms it.
    sync_fault_armed: AtomicBool,
    /// Held by `trim` and `set_aside` for their whole run (files included), so that a
    /// segment is never deleted while it is being copied aside. Never taken on the
    /// append or sync path.
    maintenance: Mutex<()>,
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> EngineError {
    EngineError::Io {
        what: format!("{what} {}", path.display()),
        source: e,
    }
}

fn corrupt(partition: u32, what: String, detail: impl std::fmt::Display) -> EngineError {
    EngineError::Corrupt {
        partition,
        what,
        detail: detail.to_string(),
    }
}

/// The directory under the log's where set-aside frames are kept, one file per partition.
const HELD_DIR: &str = "held";

fn held_name(partition: u32) -> String {
    format!("{HELD_DIR}/{partition}")
}

fn segment_name(index: u64) -> String {
    format!("{index:016x}.wal")
}

/// The index of a file named exactly as [`segment_name`] names segments (16 lowercase hex
/// digits, then `.wal`); `None` for any other name.
fn segment_index(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(".wal")?;
    let exact = hex.len() == 16 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    exact.then(|| u64::from_str_radix(hex, 16).ok()).flatten()
}

/// What the bytes at an offset of a segment hold.
enum At<'a> {
    /// A whole frame whose CRC matches.
    Intact {
        partition: u32,
        batch_seq: u64,
        /// The segment's durable offset when the frame was appended.
        durable: u64,
        body: &'a [u8],
        /// Offset just past the frame.
        end: usize,
    },
    /// A readable header and a whole body that fail the CRC: damage that can be
    /// attributed (the partition field may itself be the damaged part; then the true
    /// owner finds a gap in its batch numbers at recovery).
    Damaged {
        partition: u32,
        batch_seq: u64,
        end: usize,
    },
    /// No frame can be read here.
    Unreadable,
}

/// The CRC of a frame: over partition, batch_seq, durable, body_len and the body, in
/// that order. `body_crc` is a hasher that has seen only the body (of `body_len` bytes),
/// so that the append path can hash a large body before it takes the lock and learns
/// `durable`.
fn frame_crc(
    partition: u32,
    batch_seq: u64,
    durable: u64,
    body_len: usize,
    body_crc: &crc32fast::Hasher,
) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&partition.to_le_bytes());
    hasher.update(&batch_seq.to_le_bytes());
    hasher.update(&durable.to_le_bytes());
    hasher.update(&(body_len as u32).to_le_bytes());
    hasher.combine(body_crc);
    hasher.finalize()
}

fn body_crc(body: &[u8]) -> crc32fast::Hasher {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(body);
    hasher
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

/// Decodes the frame at `at`.
fn frame_at(bytes: &[u8], at: usize) -> At<'_> {
    let Some(header) = bytes.get(at..at.saturating_add(HEADER_BYTES)) else {
        return At::Unreadable;
    };
    let body_len = read_u32(header, 24) as usize;
    if read_u32(header, 0) != MAGIC || body_len > BODY_BYTES_MAX {
        return At::Unreadable;
    }
    let partition = read_u32(header, 4);
    let batch_seq = read_u64(header, 8);
    let durable = read_u64(header, 16);
    let crc = read_u32(header, 28);
    let start = at + HEADER_BYTES;
    let end = start + body_len;
    let Some(body) = bytes.get(start..end) else {
        return At::Unreadable;
    };
    if frame_crc(partition, batch_seq, durable, body.len(), &body_crc(body)) != crc {
        return At::Damaged {
            partition,
            batch_seq,
            end,
        };
    }
    At::Intact {
        partition,
        batch_seq,
        durable,
        body,
        end,
    }
}

/// The owner, batch and end of a frame at `at` that is whole, its CRC matching or not;
/// `None` where no frame can be read.
fn raw_frame_at(bytes: &[u8], at: usize) -> Option<(u32, u64, usize)> {
    match frame_at(bytes, at) {
        At::Intact {
            partition,
            batch_seq,
            end,
            ..
        }
        | At::Damaged {
            partition,
            batch_seq,
            end,
        } => Some((partition, batch_seq, end)),
        At::Unreadable => None,
    }
}

/// The frames of `partition` above `after` in `bytes` (a segment, or a held file), in
/// order. `what` names the file for errors.
fn frames_in(
    bytes: &[u8],
    what: &str,
    partition: u32,
    after: u64,
    out: &mut Vec<(u64, Vec<u8>)>,
) -> Result<(), EngineError> {
    let mut at = 0;
    while at < bytes.len() {
        let here = || format!("{what} at byte {at}");
        at = match frame_at(bytes, at) {
            At::Intact {
                partition: owner,
                batch_seq,
                body,
                end,
                ..
            } => {
                if owner == partition && batch_seq > after {
                    out.push((batch_seq, body.to_vec()));
                }
                end
            }
            At::Damaged {
                partition: owner,
                batch_seq,
                end,
            } => {
                if owner == partition && batch_seq > after {
                    return Err(corrupt(partition, here(), "damaged frame"));
                }
                end
            }
            At::Unreadable => return Err(corrupt(partition, here(), "unreadable frame")),
        };
    }
    Ok(())
}

/// The frames of `partition` above `after` in the bytes of a segment or a held file, as
/// [`Wal::read`] decodes them; a damaged or unreadable frame is an error. For the fuzz
/// target of the record decoders.
#[doc(hidden)]
pub fn decode_frames(
    bytes: &[u8],
    partition: u32,
    after: u64,
) -> Result<Vec<(u64, Vec<u8>)>, EngineError> {
    let mut out = Vec::new();
    frames_in(bytes, "segment", partition, after, &mut out)?;
    Ok(out)
}

/// The partition a held file's name (its decimal number, nothing else) stands for.
fn held_partition(name: &str) -> Option<u32> {
    let partition: u32 = name.parse().ok()?;
    (partition.to_string() == name).then_some(partition)
}

/// Whether an intact frame starting anywhere in `bytes` after `damage` says that the
/// byte at `damage` was already durable when it was appended (its durable offset is past
/// `damage`). If none does, everything from `damage` on was written after the last
/// completed `fdatasync` and never acknowledged. The search looks at every offset, not
/// only at frame boundaries: the damage may be in a length field.
fn later_frame_calls_durable(bytes: &[u8], damage: usize) -> bool {
    let magic = MAGIC.to_le_bytes();
    (damage + 1..bytes.len().saturating_sub(HEADER_BYTES - 1))
        .filter(|&at| bytes[at..at + 4] == magic)
        .any(|at| matches!(frame_at(bytes, at), At::Intact { durable, .. } if durable > damage as u64))
}

/// Stops the log after a failed write or sync: keeps the first reason, with when it
/// happened, and returns the error for the caller.
fn stop(inner: &mut Inner, e: EngineError) -> EngineError {
    if inner.failed.is_none() {
        inner.failed = Some(stopped_since_now(&e));
        tracing::error!(error = %e, "the WAL stopped: no more appends or syncs until reopened");
    }
    e
}

/// "since unix time {ms} ms: {error}": why and since when storage refuses durability.
pub(super) fn stopped_since_now(e: &EngineError) -> String {
    let since_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!("since unix time {since_ms} ms: {e}")
}

/// The error every append and sync returns once the log has stopped.
fn refuse_if_stopped(inner: &Inner) -> Result<(), EngineError> {
    match &inner.failed {
        Some(reason) => Err(EngineError::Storage(format!("WAL stopped {reason}"))),
        None => Ok(()),
    }
}

fn lock_ignoring_poison<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn sync_dir(dir: &Path) -> Result<(), EngineError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err("syncing directory", dir, e))
}

impl Wal {
    /// Opens the log under `dir` (created if missing), checks every frame, cuts off the
    /// newest segment's tail that was written after its last completed sync (torn or
    /// damaged), and refuses damage anywhere else (see the module docs).
    pub fn open(dir: &Path, partitions: u32, segment_bytes_max: u64) -> Result<Wal, EngineError> {
        assert!(partitions > 0);
        if segment_bytes_max == 0 {
            return Err(EngineError::Config(
                "the WAL segment size must be above 0".to_string(),
            ));
        }
        std::fs::create_dir_all(dir).map_err(|e| io_err("creating", dir, e))?;
        let mut indexes = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| io_err("listing", dir, e))? {
            let entry = entry.map_err(|e| io_err("listing", dir, e))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name == HELD_DIR {
                continue;
            }
            match segment_index(&name) {
                Some(index) => indexes.push(index),
                // An editor's backup or `lost+found` must not take the hub down; a file
                // the log did not write is none of its business.
                None => tracing::warn!(file = %name, "ignoring a file that is not a WAL segment"),
            }
        }
        indexes.sort_unstable();
        let mut segments = VecDeque::new();
        for (position, &index) in indexes.iter().enumerate() {
            let newest = position + 1 == indexes.len();
            segments.push_back(Self::check_segment(dir, index, partitions, newest)?);
        }
        let held_upto = Self::check_held(dir, partitions)?;
        let wal = Wal {
            dir: dir.to_path_buf(),
            partitions,
            segment_bytes_max,
            inner: Mutex::new(Inner {
                segments,
                covered: vec![0; partitions as usize],
                failed: None,
                held_upto,
            }),
            sync_fault_armed: AtomicBool::new(false),
            maintenance: Mutex::new(()),
        };
        if wal.lock().segments.is_empty() {
            let first = wal.create_segment(1)?;
            wal.lock().segments.push_back(first);
        }
        Ok(wal)
    }

    /// Reads and checks one segment file.
    fn check_segment(
        dir: &Path,
        index: u64,
        partitions: u32,
        newest: bool,
    ) -> Result<Segment, EngineError> {
        let path = dir.join(segment_name(index));
        let what = |at: usize| format!("wal/{} at byte {at}", segment_name(index));
        let bytes = std::fs::read(&path).map_err(|e| io_err("reading", &path, e))?;
        if bytes.starts_with(&MAGIC_V1) {
            // Version 1 frames have no durable offset; reading them as version 2 would
            // misplace every field. The log must be drained by the build that wrote it.
            return Err(EngineError::Config(format!(
                "wal/{} is in WAL format version 1; this build reads only version \
                 {FORMAT_VERSION}: start the previous build on this directory and stop it \
                 cleanly after every partition has snapshotted, or restore from a backup",
                segment_name(index)
            )));
        }
        let mut last_seq = vec![0u64; partitions as usize];
        let mut at = 0;
        while at < bytes.len() {
            let (partition, batch_seq, end, intact) = match frame_at(&bytes, at) {
                At::Intact {
                    partition,
                    batch_seq,
                    end,
                    ..
                } => (partition, batch_seq, end, true),
                At::Damaged {
                    partition,
                    batch_seq,
                    end,
                } if partition < partitions
                    && (!newest || later_frame_calls_durable(&bytes, at)) =>
                {
                    // Damage inside the log: the frame is kept, so that reading this
                    // partition's batches fails on it and stops only that partition.
                    tracing::error!(
                        partition,
                        segment = %path.display(),
                        offset = at,
                        "damaged WAL frame"
                    );
                    (partition, batch_seq, end, false)
                }
                _ if !newest || later_frame_calls_durable(&bytes, at) => {
                    return Err(corrupt(0, what(at), "unreadable frame"));
                }
                _ => {
                    // Written after the last completed sync, never acknowledged: a torn
                    // tail, or lost pages with surviving ones after them.
                    Self::cut_unsynced_tail(&path, at, bytes.len())?;
                    break;
                }
            };
            let slot = last_seq
                .get_mut(partition as usize)
                .ok_or_else(|| corrupt(partition, what(at), "no such partition"))?;
            if intact && batch_seq <= *slot {
                return Err(corrupt(
                    partition,
                    what(at),
                    format!("batch {batch_seq} after batch {}", *slot),
                ));
            }
            *slot = (*slot).max(batch_seq);
            at = end;
        }
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| io_err("opening", &path, e))?;
        if newest {
            // What survived may still be only in the page cache (a process crash): make
            // it durable before any frame says it is.
            file.sync_data().map_err(|e| io_err("syncing", &path, e))?;
        }
        Ok(Segment {
            index,
            file: Arc::new(file),
            len: at as u64,
            durable: at as u64,
            last_seq,
        })
    }

    /// Finds the held files and the last batch each holds. A `.tmp` file is a set-aside
    /// that a crash interrupted before its rename: the log still has those frames (the
    /// older held file, if any, is whole), so it is deleted. Damage in a held file is left
    /// for `read` to report: it stops only that partition.
    fn check_held(dir: &Path, partitions: u32) -> Result<Vec<u64>, EngineError> {
        let mut held_upto = vec![0u64; partitions as usize];
        let held_dir = dir.join(HELD_DIR);
        if !held_dir.is_dir() {
            return Ok(held_upto);
        }
        let listing = std::fs::read_dir(&held_dir).map_err(|e| io_err("listing", &held_dir, e))?;
        for entry in listing {
            let entry = entry.map_err(|e| io_err("listing", &held_dir, e))?;
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.strip_suffix(".tmp").and_then(held_partition).is_some() {
                tracing::warn!(file = %path.display(), "deleting an interrupted set-aside");
                std::fs::remove_file(&path).map_err(|e| io_err("deleting", &path, e))?;
                continue;
            }
            let Some(partition) = held_partition(&name) else {
                tracing::warn!(file = %path.display(), "ignoring a file that is not a held file");
                continue;
            };
            let slot = held_upto.get_mut(partition as usize).ok_or_else(|| {
                EngineError::Config(format!(
                    "wal/{} holds frames of partition {partition}, but there are {partitions}",
                    held_name(partition)
                ))
            })?;
            let bytes = std::fs::read(&path).map_err(|e| io_err("reading", &path, e))?;
            let mut at = 0;
            while let Some((owner, batch_seq, end)) = raw_frame_at(&bytes, at) {
                if owner == partition {
                    *slot = (*slot).max(batch_seq);
                }
                at = end;
            }
        }
        Ok(held_upto)
    }

    fn cut_unsynced_tail(path: &Path, at: usize, len: usize) -> Result<(), EngineError> {
        tracing::warn!(
            segment = %path.display(),
            offset = at,
            dropped_bytes = len - at,
            "cutting off a WAL tail written after the last sync (never acknowledged)"
        );
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| io_err("opening", path, e))?;
        file.set_len(at as u64)
            .and_then(|()| file.sync_all())
            .map_err(|e| io_err("truncating", path, e))
    }

    fn create_segment(&self, index: u64) -> Result<Segment, EngineError> {
        let path = self.dir.join(segment_name(index));
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(|e| io_err("creating", &path, e))?;
        sync_dir(&self.dir)?;
        Ok(Segment {
            index,
            file: Arc::new(file),
            len: 0,
            durable: 0,
            last_seq: vec![0; self.partitions as usize],
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves nothing half-done that a later caller
        // could misread (`failed` guards partial writes), so poisoning is ignored.
        lock_ignoring_poison(&self.inner)
    }

    /// Appends one frame (durable after the next [`Wal::sync`]).
    pub fn append(&self, partition: u32, batch_seq: u64, body: &[u8]) -> Result<(), EngineError> {
        assert!(
            partition < self.partitions,
            "partition {partition} out of range"
        );
        if body.len() > BODY_BYTES_MAX {
            return Err(EngineError::Storage(format!(
                "batch record of {} bytes is larger than {BODY_BYTES_MAX}",
                body.len()
            )));
        }
        // The frame is built and the body hashed before the lock is taken; only the
        // durable offset and the CRC over it are filled in under the lock.
        let mut frame = Vec::with_capacity(HEADER_BYTES + body.len());
        frame.extend_from_slice(&MAGIC.to_le_bytes());
        frame.extend_from_slice(&partition.to_le_bytes());
        frame.extend_from_slice(&batch_seq.to_le_bytes());
        frame.extend_from_slice(&0u64.to_le_bytes()); // durable, below
        frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
        frame.extend_from_slice(&0u32.to_le_bytes()); // crc, below
        frame.extend_from_slice(body);
        debug_assert_eq!(frame.len(), HEADER_BYTES + body.len());
        let body_crc = body_crc(body);

        let mut inner = self.lock();
        refuse_if_stopped(&inner)?;
        let current = inner.segments.back().expect("a current segment");
        if current.len > 0 && current.len + frame.len() as u64 > self.segment_bytes_max {
            // Roll: the full segment becomes durable before anything goes to the next one.
            let (index, file) = (current.index, current.file.clone());
            let rolled = self
                .sync_segment(index, &file)
                .and_then(|()| self.create_segment(index + 1));
            match rolled {
                Ok(next) => {
                    let full = inner.segments.back_mut().expect("a current segment");
                    full.durable = full.len;
                    inner.segments.push_back(next);
                }
                Err(e) => return Err(stop(&mut inner, e)),
            }
        }
        let current = inner.segments.back_mut().expect("a current segment");
        frame[16..24].copy_from_slice(&current.durable.to_le_bytes());
        let crc = frame_crc(partition, batch_seq, current.durable, body.len(), &body_crc);
        frame[28..32].copy_from_slice(&crc.to_le_bytes());
        if let Err(e) = (&*current.file).write_all(&frame) {
            let e = io_err(
                "appending to",
                &self.dir.join(segment_name(current.index)),
                e,
            );
            return Err(stop(&mut inner, e));
        }
        current.len += frame.len() as u64;
        let slot = &mut current.last_seq[partition as usize];
        assert!(batch_seq > *slot, "batch {batch_seq} after batch {slot}");
        *slot = batch_seq;
        Ok(())
    }

    /// Makes every frame appended so far durable: one `fdatasync` of the newest segment
    /// (older ones were synced when the log rolled past them).
    pub fn sync(&self) -> Result<(), EngineError> {
        let (index, file, len) = {
            let inner = self.lock();
            refuse_if_stopped(&inner)?;
            let current = inner.segments.back().expect("a current segment");
            (current.index, current.file.clone(), current.len)
        };
        // The lock is not held while the disk works: appends go on meanwhile, and their
        // frames still carry the durable offset of the sync before this one.
        let synced = self.sync_segment(index, &file);
        let mut inner = self.lock();
        if let Err(e) = synced {
            return Err(stop(&mut inner, e));
        }
        // Everything up to `len` was written before the fdatasync began, so it is durable
        // now (the segment may have rolled meanwhile; then it is durable whole anyway).
        if let Some(segment) = inner.segments.iter_mut().find(|s| s.index == index) {
            segment.durable = segment.durable.max(len);
        }
        Ok(())
    }

    /// The one place the log calls `fdatasync`.
    fn sync_segment(&self, index: u64, file: &File) -> Result<(), EngineError> {
        let result = if self.sync_fault_armed.swap(false, Ordering::AcqRel) {
            Err(std::io::Error::other("injected fdatasync failure"))
        } else {
            file.sync_data()
        };
        result.map_err(|e| io_err("syncing", &self.dir.join(segment_name(index)), e))
    }

    /// Test hook: the next `fdatasync` of the log fails without syncing, once, the way
    /// Linux reports a writeback error once. Nothing in the engine calls it.
    #[doc(hidden)]
    pub fn inject_sync_failure(&self) {
        self.sync_fault_armed.store(true, Ordering::Release);
    }

    /// The frames of `partition` with a batch sequence above `after`, in log order: first
    /// those set aside in its held file, then those in the segments.
    pub fn read(&self, partition: u32, after: u64) -> Result<Vec<(u64, Vec<u8>)>, EngineError> {
        let (held_upto, wanted) = {
            let inner = self.lock();
            let held_upto = inner.held_upto[partition as usize];
            // The log's own copies of held frames are skipped: the held file has them.
            let from = after.max(held_upto);
            let wanted: Vec<(u64, u64)> = inner
                .segments
                .iter()
                .filter(|s| s.last_seq[partition as usize] > from)
                .map(|s| (s.index, s.len))
                .collect();
            (held_upto, wanted)
        };
        let mut out = Vec::new();
        if held_upto > after {
            let path = self.dir.join(held_name(partition));
            let bytes = std::fs::read(&path).map_err(|e| io_err("reading", &path, e))?;
            let what = format!("wal/{}", held_name(partition));
            frames_in(&bytes, &what, partition, after, &mut out)?;
        }
        let from = after.max(held_upto);
        for (index, len) in wanted {
            let path = self.dir.join(segment_name(index));
            let mut bytes = std::fs::read(&path).map_err(|e| io_err("reading", &path, e))?;
            // Frames appended after we looked are not ours to read yet.
            bytes.truncate(len as usize);
            let what = format!("wal/{}", segment_name(index));
            frames_in(&bytes, &what, partition, from, &mut out)?;
        }
        Ok(out)
    }

    /// Records that `partition`'s frames up to `upto` are in a durable snapshot and deletes
    /// the oldest segments that no partition needs any more. The caller must have made
    /// that snapshot durable first.
    ///
    /// A partition set aside ([`Wal::set_aside`]) counts as covered up to the end of its
    /// held file; once its own snapshot covers that, the held file is deleted too.
    pub fn trim(&self, partition: u32, upto: u64) -> Result<(), EngineError> {
        let _maintenance = lock_ignoring_poison(&self.maintenance);
        let (doomed, held_done) = {
            let mut inner = self.lock();
            let p = partition as usize;
            inner.covered[p] = inner.covered[p].max(upto);
            let held_done = inner.held_upto[p] > 0 && inner.covered[p] >= inner.held_upto[p];
            if held_done {
                inner.held_upto[p] = 0;
            }
            let mut doomed = Vec::new();
            while inner.segments.len() > 1 {
                let oldest = inner.segments.front().expect("len > 1");
                let needed = oldest
                    .last_seq
                    .iter()
                    .zip(inner.covered.iter().zip(&inner.held_upto))
                    .any(|(last, (covered, held))| last > covered.max(held));
                if needed {
                    break;
                }
                doomed.push(oldest.index);
                inner.segments.pop_front();
            }
            (doomed, held_done)
        };
        // Only garbage collection: a segment that survives a crash holds nothing past a
        // durable snapshot or a held file, and recovery reads only what follows the
        // snapshot.
        for index in doomed {
            let path = self.dir.join(segment_name(index));
            std::fs::remove_file(&path).map_err(|e| io_err("deleting", &path, e))?;
        }
        if held_done {
            let path = self.dir.join(held_name(partition));
            std::fs::remove_file(&path).map_err(|e| io_err("deleting", &path, e))?;
            tracing::info!(
                partition,
                "set-aside WAL frames deleted: a snapshot covers them"
            );
        }
        Ok(())
    }

    /// Sets a stopped partition's frames aside, so that trimming stops waiting for it.
    ///
    /// Copies every frame of `partition` above the batch its snapshot covers (as far as
    /// [`Wal::trim`] was told; all of its frames if never), damaged ones included, byte for
    /// byte, into `wal/held/{partition}` (written to a `.tmp` file, fdatasynced, renamed,
    /// directory synced), then counts the partition as covered up to the last batch
    /// copied. From then on [`Wal::read`] returns the held frames first, then any newer
    /// ones from the segments, so a restart after the repair recovers the partition as if
    /// nothing had been moved; its first trim past the held frames deletes the file. Frames
    /// the partition appends later hold their segments as before. Calling it again adds
    /// the newer frames. It does not stop the partition: the caller has already.
    pub fn set_aside(&self, partition: u32) -> Result<(), EngineError> {
        assert!(
            partition < self.partitions,
            "partition {partition} out of range"
        );
        let _maintenance = lock_ignoring_poison(&self.maintenance);
        let (covered, held_upto, wanted) = {
            let inner = self.lock();
            refuse_if_stopped(&inner)?;
            let p = partition as usize;
            let (covered, held_upto) = (inner.covered[p], inner.held_upto[p]);
            let wanted: Vec<(u64, u64)> = inner
                .segments
                .iter()
                .filter(|s| s.last_seq[p] > covered.max(held_upto))
                .map(|s| (s.index, s.len))
                .collect();
            (covered, held_upto, wanted)
        };
        let mut held = Vec::new();
        let mut last = 0;
        let mut copy = |bytes: &[u8], what: &str, above: u64| -> Result<(), EngineError> {
            let mut at = 0;
            while at < bytes.len() {
                let (owner, batch_seq, end) = raw_frame_at(bytes, at).ok_or_else(|| {
                    corrupt(
                        partition,
                        format!("{what} at byte {at}"),
                        "unreadable frame",
                    )
                })?;
                if owner == partition && batch_seq > above {
                    held.extend_from_slice(&bytes[at..end]);
                    last = batch_seq;
                }
                at = end;
            }
            Ok(())
        };
        if held_upto > covered {
            let path = self.dir.join(held_name(partition));
            let bytes = std::fs::read(&path).map_err(|e| io_err("reading", &path, e))?;
            copy(&bytes, &format!("wal/{}", held_name(partition)), covered)?;
        }
        for (index, len) in wanted {
            let path = self.dir.join(segment_name(index));
            let mut bytes = std::fs::read(&path).map_err(|e| io_err("reading", &path, e))?;
            bytes.truncate(len as usize);
            let what = format!("wal/{}", segment_name(index));
            copy(&bytes, &what, covered.max(held_upto))?;
        }
        if last <= held_upto {
            return Ok(()); // nothing new to set aside
        }
        let held_dir = self.dir.join(HELD_DIR);
        std::fs::create_dir_all(&held_dir).map_err(|e| io_err("creating", &held_dir, e))?;
        sync_dir(&self.dir)?;
        let path = self.dir.join(held_name(partition));
        let tmp = self.dir.join(format!("{}.tmp", held_name(partition)));
        File::create(&tmp)
            .and_then(|mut file| {
                file.write_all(&held)?;
                file.sync_all()
            })
            .map_err(|e| io_err("writing", &tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| io_err("renaming", &tmp, e))?;
        sync_dir(&held_dir)?;
        self.lock().held_upto[partition as usize] = last;
        tracing::warn!(
            partition,
            upto = last,
            bytes = held.len(),
            "WAL frames of a stopped partition set aside; trimming no longer waits for it"
        );
        Ok(())
    }

    /// Why the log refuses to write and sync, if it does (since a failed write or sync).
    pub fn failed(&self) -> Option<String> {
        self.lock().failed.clone()
    }

    /// Number of segment files (for tests and status).
    pub fn segments(&self) -> usize {
        self.lock().segments.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(seq: u64) -> Vec<u8> {
        vec![seq as u8; 100 + seq as usize]
    }

    /// XORs `mask` into byte `at` of the first segment; returns the damaged bytes.
    fn damage_first_segment(dir: &Path, at: usize, mask: u8) -> (PathBuf, Vec<u8>) {
        let path = dir.join(segment_name(1));
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[at] ^= mask;
        std::fs::write(&path, &bytes).expect("write");
        (path, bytes)
    }

    /// Writes batches 1..=`batches` of every partition (interleaved), each round synced
    /// (so every frame after the first round says that the round before it is durable),
    /// and closes.
    fn written(dir: &Path, partitions: u32, segment_bytes: u64, batches: u64) {
        let wal = Wal::open(dir, partitions, segment_bytes).expect("open");
        for seq in 1..=batches {
            for partition in 0..partitions {
                wal.append(partition, seq, &body(seq)).expect("append");
            }
            wal.sync().expect("sync");
        }
    }

    /// Offset of batch `seq` in the first segment of a one-partition log of `body` frames.
    fn offset_of(seq: u64) -> usize {
        (1..seq).map(|s| HEADER_BYTES + body(s).len()).sum()
    }

    /// A one-partition log: batch 1 synced, batches 2 and 3 appended after it and never
    /// synced (the process or the machine stopped before the next sync round).
    fn synced_then_unsynced(dir: &Path) {
        let wal = Wal::open(dir, 1, SEGMENT_BYTES_MAX).expect("open");
        wal.append(0, 1, &body(1)).expect("append");
        wal.sync().expect("sync");
        wal.append(0, 2, &body(2)).expect("append");
        wal.append(0, 3, &body(3)).expect("append");
    }

    #[test]
    fn frames_come_back_per_partition_across_segments_and_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let wal = Wal::open(dir.path(), 2, 1_000).expect("open");
            for seq in 1..=20 {
                wal.append(0, seq, &body(seq)).expect("append");
                wal.append(1, seq * 2, &body(seq)).expect("append");
            }
            wal.sync().expect("sync");
            assert!(wal.segments() > 3, "small segments roll");
        }
        let wal = Wal::open(dir.path(), 2, 1_000).expect("reopen");
        let zero = wal.read(0, 5).expect("read");
        assert_eq!(
            zero.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            (6..=20).collect::<Vec<_>>()
        );
        assert!(zero.iter().all(|(s, b)| *b == body(*s)));
        let one = wal.read(1, 0).expect("read");
        assert_eq!(one.len(), 20);
        assert_eq!(one[19].0, 40);
        // Appending continues after the reopened frames.
        wal.append(0, 21, &body(21)).expect("append");
        assert_eq!(wal.read(0, 20).expect("read").len(), 1);
    }

    #[test]
    fn trimming_deletes_only_segments_every_partition_is_done_with() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wal = Wal::open(dir.path(), 2, 500).expect("open");
        for seq in 1..=30 {
            wal.append(0, seq, &body(1)).expect("append");
            wal.append(1, seq, &body(1)).expect("append");
        }
        let before = wal.segments();
        wal.trim(0, 30).expect("trim");
        assert_eq!(
            wal.segments(),
            before,
            "partition 1 still needs every segment"
        );
        wal.trim(1, 15).expect("trim");
        assert!(wal.segments() < before);
        // Nothing partition 1 needs after its snapshot is gone.
        let rest = wal.read(1, 15).expect("read");
        assert_eq!(
            rest.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            (16..=30).collect::<Vec<_>>()
        );
        let files = std::fs::read_dir(dir.path()).expect("list").count();
        assert_eq!(files, wal.segments());
    }

    #[test]
    fn a_torn_tail_is_cut_off_and_appending_goes_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        written(dir.path(), 1, SEGMENT_BYTES_MAX, 3);
        let path = dir.path().join(segment_name(1));
        let full = std::fs::metadata(&path).expect("stat").len();
        // The last frame was only half written, then zeros (as a crash can leave).
        let file = OpenOptions::new().write(true).open(&path).expect("open");
        file.set_len(full - 50).expect("cut");
        file.set_len(full + 4096).expect("extend");
        drop(file);
        let wal = Wal::open(dir.path(), 1, SEGMENT_BYTES_MAX).expect("reopen");
        let frames = wal.read(0, 0).expect("read");
        assert_eq!(
            frames.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            vec![1, 2]
        );
        wal.append(0, 3, &body(3)).expect("append");
        wal.sync().expect("sync");
        drop(wal);
        let wal = Wal::open(dir.path(), 1, SEGMENT_BYTES_MAX).expect("reopen");
        assert_eq!(wal.read(0, 0).expect("read").len(), 3);
    }

    #[test]
    fn damage_before_intact_frames_stops_only_its_partition_and_is_not_cut() {
        let dir = tempfile::tempdir().expect("tempdir");
        written(dir.path(), 2, SEGMENT_BYTES_MAX, 3);
        // One flipped bit in the body of the first frame (partition 0, batch 1).
        let (path, bytes) = damage_first_segment(dir.path(), HEADER_BYTES + 10, 0x01);
        let wal = Wal::open(dir.path(), 2, SEGMENT_BYTES_MAX).expect("reopen");
        let error = wal.read(0, 0).expect_err("partition 0 must fail");
        let text = error.to_string();
        assert!(
            matches!(error, EngineError::Corrupt { partition: 0, .. }),
            "{text}"
        );
        assert!(
            text.contains(&segment_name(1)) && text.contains("byte 0"),
            "{text}"
        );
        // Past its snapshot, partition 0 does not need the damaged frame.
        assert_eq!(wal.read(0, 1).expect("read").len(), 2);
        // The other partition is untouched, and nothing was cut off.
        assert_eq!(wal.read(1, 0).expect("read").len(), 3);
        assert_eq!(std::fs::read(&path).expect("read").len(), bytes.len());
    }

    #[test]
    fn an_unreadable_header_before_intact_frames_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        written(dir.path(), 1, SEGMENT_BYTES_MAX, 3);
        // The first frame's magic.
        let (path, bytes) = damage_first_segment(dir.path(), 0, 0xff);
        let error = Wal::open(dir.path(), 1, SEGMENT_BYTES_MAX)
            .err()
            .expect("must refuse");
        assert!(
            matches!(error, EngineError::Corrupt { .. }) && error.to_string().contains("byte 0"),
            "{error}"
        );
        assert_eq!(std::fs::read(&path).expect("read").len(), bytes.len());
    }

    #[test]
    fn damage_in_an_older_segment_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        written(dir.path(), 1, 300, 6);
        let path = dir.path().join(segment_name(1));
        let len = std::fs::metadata(&path).expect("stat").len();
        let file = OpenOptions::new().write(true).open(&path).expect("open");
        file.set_len(len - 1).expect("cut");
        drop(file);
        let error = Wal::open(dir.path(), 1, 300).err().expect("must refuse");
        assert!(matches!(error, EngineError::Corrupt { .. }), "{error}");
    }

    #[test]
    fn a_failed_sync_stops_the_log_for_good() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wal = Wal::open(dir.path(), 1, SEGMENT_BYTES_MAX).expect("open");
        wal.append(0, 1, &body(1)).expect("append");
        wal.sync().expect("sync");
        assert!(wal.failed().is_none());
        wal.append(0, 2, &body(2)).expect("append");
        wal.inject_sync_failure();
        let first = wal.sync().expect_err("the injected failure");
        assert!(first.to_string().contains("injected"), "{first}");
        // Linux would now report success although batch 2 may never reach the disk.
        let second = wal.sync().expect_err("a failed sync is sticky");
        assert!(
            second.to_string().contains("injected") && second.to_string().contains("since"),
            "{second}"
        );
        let refused = wal.append(0, 3, &body(3)).expect_err("appends are refused");
        assert!(refused.to_string().contains("injected"), "{refused}");
        let reason = wal.failed().expect("the log reports why it stopped");
        assert!(reason.contains(&segment_name(1)), "{reason}");
        // Reopening (after the operator checked the disk) starts a fresh log.
        drop(wal);
        let wal = Wal::open(dir.path(), 1, SEGMENT_BYTES_MAX).expect("reopen");
        assert!(wal.failed().is_none());
        wal.sync().expect("sync after reopen");
    }

    #[test]
    fn a_failed_sync_while_rolling_stops_the_log_for_good() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wal = Wal::open(dir.path(), 1, 300).expect("open");
        wal.append(0, 1, &body(1)).expect("append");
        wal.append(0, 2, &body(2)).expect("append");
        wal.inject_sync_failure();
        // Batch 3 does not fit: the full segment is synced first, and that fails.
        wal.append(0, 3, &body(3))
            .expect_err("the injected failure");
        assert_eq!(wal.segments(), 1, "no segment after an unsynced one");
        wal.sync().expect_err("a failed sync is sticky");
        wal.append(0, 3, &body(3)).expect_err("appends are refused");
        assert!(wal.failed().is_some());
    }

    #[test]
    fn files_that_are_not_segments_are_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        written(dir.path(), 1, SEGMENT_BYTES_MAX, 2);
        // An editor's backup, a copy, a near miss of the pattern, a directory.
        let segment = std::fs::read(dir.path().join(segment_name(1))).expect("read");
        for stray in [
            "0000000000000001.wal~",
            "0000000000000001.wal.bak",
            "1.wal",
            "000000000000000A.wal",
            ".0000000000000001.wal.swp",
            "notes.txt",
        ] {
            std::fs::write(dir.path().join(stray), &segment).expect("stray file");
        }
        std::fs::create_dir(dir.path().join("lost+found")).expect("dir");
        let wal = Wal::open(dir.path(), 1, SEGMENT_BYTES_MAX).expect("strays are ignored");
        assert_eq!(wal.segments(), 1);
        assert_eq!(wal.read(0, 0).expect("read").len(), 2);
        drop(wal);
        // A file with a segment's name is still checked, and refused when damaged.
        std::fs::write(dir.path().join(segment_name(0)), b"garbage, not frames").expect("write");
        let error = Wal::open(dir.path(), 1, SEGMENT_BYTES_MAX)
            .err()
            .expect("a damaged segment is refused");
        assert!(error.to_string().contains(&segment_name(0)), "{error}");
    }

    #[test]
    fn unsynced_damage_followed_by_unsynced_intact_frames_is_cut() {
        // After a power loss the pages written after the last fdatasync come back as any
        // mix of lost and surviving pages: here batch 2 is garbage and batch 3 survived.
        // Neither was ever acknowledged, so both go, whether batch 2's header or only its
        // body is damaged.
        for (what, at) in [
            ("body", offset_of(2) + HEADER_BYTES + 7),
            ("header", offset_of(2)),
        ] {
            let dir = tempfile::tempdir().expect("tempdir");
            synced_then_unsynced(dir.path());
            damage_first_segment(dir.path(), at, 0x5a);
            let wal = Wal::open(dir.path(), 1, SEGMENT_BYTES_MAX)
                .unwrap_or_else(|e| panic!("damaged {what}: open refused: {e}"));
            let frames = wal
                .read(0, 0)
                .unwrap_or_else(|e| panic!("damaged {what}: read failed: {e}"));
            assert_eq!(
                frames.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
                vec![1],
                "damaged {what}"
            );
            let path = dir.path().join(segment_name(1));
            let len = std::fs::metadata(&path).expect("stat").len();
            assert_eq!(len, offset_of(2) as u64, "damaged {what}: cut at batch 2");
            // Appending goes on where the cut was, and survives a reopen.
            wal.append(0, 2, &body(2)).expect("append");
            wal.sync().expect("sync");
            drop(wal);
            let wal = Wal::open(dir.path(), 1, SEGMENT_BYTES_MAX).expect("reopen");
            assert_eq!(wal.read(0, 0).expect("read").len(), 2, "damaged {what}");
        }
    }

    #[test]
    fn damage_to_a_frame_a_later_frame_calls_durable_is_refused() {
        // Batches 1 and 2 each synced before the next was appended: batch 3 says the
        // bytes of batch 2 were durable, so damage there is real damage, not a lost page.
        let dir = tempfile::tempdir().expect("tempdir");
        written(dir.path(), 1, SEGMENT_BYTES_MAX, 3);
        let (path, bytes) = damage_first_segment(dir.path(), offset_of(2) + HEADER_BYTES + 7, 1);
        let wal = Wal::open(dir.path(), 1, SEGMENT_BYTES_MAX).expect("open");
        let error = wal.read(0, 0).expect_err("partition 0 must stop");
        let text = error.to_string();
        assert!(
            text.contains(&segment_name(1)) && text.contains(&format!("byte {}", offset_of(2))),
            "{text}"
        );
        assert_eq!(std::fs::read(&path).expect("read").len(), bytes.len());
        drop(wal);
        // The header too: the store is refused, naming the file and offset.
        damage_first_segment(dir.path(), offset_of(2), 0xff);
        let error = Wal::open(dir.path(), 1, SEGMENT_BYTES_MAX)
            .err()
            .expect("must refuse");
        let text = error.to_string();
        assert!(
            text.contains(&segment_name(1)) && text.contains(&format!("byte {}", offset_of(2))),
            "{text}"
        );
    }

    #[test]
    fn a_segment_of_the_old_format_is_refused_by_name() {
        // A version 1 frame: a 24-byte header without the durable offset.
        let body = body(1);
        let mut crc = crc32fast::Hasher::new();
        crc.update(&0u32.to_le_bytes());
        crc.update(&1u64.to_le_bytes());
        crc.update(&(body.len() as u32).to_le_bytes());
        crc.update(&body);
        let mut frame = b"LAW1".to_vec();
        frame.extend_from_slice(&0u32.to_le_bytes());
        frame.extend_from_slice(&1u64.to_le_bytes());
        frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
        frame.extend_from_slice(&crc.finalize().to_le_bytes());
        frame.extend_from_slice(&body);
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(segment_name(1));
        std::fs::write(&path, &frame).expect("write");
        let error = Wal::open(dir.path(), 1, SEGMENT_BYTES_MAX)
            .err()
            .expect("an old segment must be refused, not misread");
        let text = error.to_string();
        assert!(
            text.contains(&segment_name(1)) && text.contains("format version 1"),
            "{text}"
        );
        assert_eq!(std::fs::read(&path).expect("read"), frame, "left as it was");
    }

    #[test]
    fn a_partition_set_aside_no_longer_holds_trimming_back_and_keeps_its_frames() {
        let dir = tempfile::tempdir().expect("tempdir");
        let seqs = |frames: &[(u64, Vec<u8>)]| frames.iter().map(|(s, _)| *s).collect::<Vec<_>>();
        {
            let wal = Wal::open(dir.path(), 2, 500).expect("open");
            for seq in 1..=30 {
                wal.append(0, seq, &body(1)).expect("append");
                wal.append(1, seq, &body(2)).expect("append");
            }
            wal.sync().expect("sync");
            // Partition 1 stopped: it never snapshots, so it never trims.
            wal.trim(0, 30).expect("trim");
            let before = wal.segments();
            assert!(before > 3);
            wal.set_aside(1).expect("set aside");
            wal.trim(0, 30).expect("trim");
            assert_eq!(wal.segments(), 1, "only the segment being written is left");
            let frames = wal.read(1, 0).expect("read");
            assert_eq!(seqs(&frames), (1..=30).collect::<Vec<_>>());
            assert!(frames.iter().all(|(_, b)| *b == body(2)));
            // A frame partition 1 writes after being set aside still holds its segment.
            wal.append(1, 31, &body(2)).expect("append");
            for seq in 31..=40 {
                wal.append(0, seq, &body(1)).expect("append");
            }
            wal.sync().expect("sync");
            wal.trim(0, 40).expect("trim");
            assert_eq!(seqs(&wal.read(1, 29).expect("read")), vec![30, 31]);
        }
        // After a restart the set-aside frames are still there, then the newer one.
        let wal = Wal::open(dir.path(), 2, 500).expect("reopen");
        assert_eq!(
            seqs(&wal.read(1, 0).expect("read")),
            (1..=31).collect::<Vec<_>>()
        );
        assert_eq!(
            seqs(&wal.read(1, 12).expect("read")),
            (13..=31).collect::<Vec<_>>()
        );
        assert!(wal.read(0, 40).expect("read").is_empty());
        // Partition 1 recovered and snapshotted: what was set aside goes.
        wal.trim(1, 31).expect("trim");
        assert!(!dir.path().join("held").join("1").exists());
        // Only the log's own copy of batch 31 is left, until its segment is trimmed.
        assert_eq!(seqs(&wal.read(1, 0).expect("read")), vec![31]);
    }

    #[test]
    fn a_damaged_frame_set_aside_still_stops_its_partition() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Segment 1 holds partition 0's batch 1, partition 1's batch 1, partition 0's
        // batch 2; damage the body of partition 1's batch 1.
        written(dir.path(), 2, 500, 10);
        let at = HEADER_BYTES + body(1).len() + HEADER_BYTES + 5;
        damage_first_segment(dir.path(), at, 0x10);
        let wal = Wal::open(dir.path(), 2, 500).expect("open");
        wal.trim(0, 10).expect("trim");
        wal.set_aside(1).expect("set aside");
        wal.trim(0, 10).expect("trim");
        assert!(!dir.path().join(segment_name(1)).exists(), "trimmed");
        let error = wal.read(1, 0).expect_err("the damage was carried along");
        assert!(
            matches!(error, EngineError::Corrupt { partition: 1, .. })
                && error.to_string().contains("held/1 at byte 0"),
            "{error}"
        );
        let rest = wal.read(1, 1).expect("past the damaged batch");
        assert_eq!(
            rest.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            (2..=10).collect::<Vec<_>>()
        );
    }

    #[test]
    fn out_of_order_batches_in_a_segment_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        written(dir.path(), 1, SEGMENT_BYTES_MAX, 2);
        // Swap the two frames on disk.
        let path = dir.path().join(segment_name(1));
        let bytes = std::fs::read(&path).expect("read");
        let split = HEADER_BYTES + body(1).len();
        let swapped = [&bytes[split..], &bytes[..split]].concat();
        std::fs::write(&path, swapped).expect("write");
        let error = Wal::open(dir.path(), 1, SEGMENT_BYTES_MAX)
            .err()
            .expect("must refuse");
        assert!(
            error.to_string().contains("batch 1 after batch 2"),
            "{error}"
        );
    }
}
