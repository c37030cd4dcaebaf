//! The one binary encoding of every record the engine stores: WAL batches, partition
//! snapshots, the partition state inside them, archived transfers and the archive's run
//! metadata. Each is a small *envelope* naming the record's kind and format version,
//! followed by the record as MessagePack.
//!
//! # Why MessagePack
//!
//! DESIGN §6 names MessagePack through `rmp-serde`: bincode, used before, is unmaintained
//! (RUSTSEC-2025-0141). MessagePack marks the type of every value, so a garbled record is
//! far more often refused than misread, and `rmp-serde` measured about 0.6-0.8 µs per
//! encode + decode of a transfer on this project's machine. The compact form is used:
//!
//! * Structs are arrays of their fields, in declaration order, without names (about half
//!   the size of the map form, and faster). Positional: adding, removing, reordering or retyping
//!   a field of a stored type changes the format. That is what the version is for.
//! * Enum variants are written by *name* (`rmp-serde` 1.3 always does): a unit variant is
//!   its name as a string, a variant with fields a one-entry map from the name to the
//!   array of its fields. Reordering variants or adding one leaves old records readable;
//!   renaming a variant does not.
//! * Byte containers (`Vec<u8>`, `[u8; N]`) are MessagePack `bin`, raw bytes behind a
//!   length ([`BytesMode::ForceAll`]), instead of arrays of one integer per byte (which
//!   take up to two bytes each). The decoder reads `bin` into any sequence of `u8`. A short
//!   array whose bytes are all below 128 stays an array: equally small.
//! * `i128` balances are a 16-byte big-endian `bin` (18 bytes even for zero: most of a
//!   snapshot's account entries); `None` is `nil`, so a stored `Option<Option<T>>` would
//!   read `Some(None)` back as `None`: no stored type has one.
//! * Trailing bytes after the body are refused, so a garbled or mis-framed record is
//!   detected rather than half-read.
//!
//! # Why the envelope
//!
//! A positional body does not say which shape it was written in. Without a version, a
//! build whose stored types changed would misread old records or fail with an error that
//! does not say why. The envelope is three bytes:
//!
//! ```text
//! 0xC1 | kind tag (RecordKind::tag) | format version (RecordKind::version) | MessagePack body
//! ```
//!
//! `0xC1` is the one byte MessagePack never uses, so a record written without an envelope
//! (a bare body) is refused at its first byte. The kind tag catches a record of one kind
//! handed to the decoder of another (a snapshot's bytes in the WAL, say). The version lets
//! a reader refuse a record from a newer build, naming the kind and both versions, instead
//! of guessing. Every refusal is a [`CodecError`]; callers map it into the `EngineError`
//! that names the partition and the record's key.
//!
//! The partition state (`machine::snapshot`) still carries a `version` field of its own
//! from before the envelope, checked after decoding. It is redundant: the envelope's
//! [`RecordKind::PartitionState`] version is the one to bump; the field can go in a
//! format version of its own.
//!
//! The golden-byte tests in `engine/tests/formats.rs` pin the exact bytes of a sample of
//! every record kind and every enum variant that can be stored: a change to a stored type
//! turns them red before it can silently change the format.
//!
//! # How to add a format version
//!
//! 1. Bump the kind's number in [`RecordKind::version`]. Never renumber or reuse a
//!    [`RecordKind::tag`].
//! 2. If records of the old version can still be on disk, keep their shape as a type of
//!    its own (say `WalRecordV1`) and make the reader call [`open_record`], match on the
//!    version it returns, [`decode_body`] the old shape and convert it. [`decode_record`]
//!    alone reads only the current version.
//! 3. Give the new version golden bytes in `engine/tests/formats.rs`, and keep the old
//!    version's bytes as a test that they still decode (or are refused, if dropped).

use rmp_serde::config::BytesMode;
use serde::{de::DeserializeOwned, Serialize};
use std::fmt;

// The envelope's layout is shared with the records `sharding` writes to the cluster's logs
// (`sharding::records::envelope`): one magic byte, one layout, and kind tags split between
// the two (the engine's are `ENGINE_TAGS`, checked below), so that a record of one is
// never taken for a record of the other.
pub use sharding::records::envelope::{ENVELOPE_BYTES, ENVELOPE_MAGIC};
use sharding::records::ENGINE_TAGS;

/// The kinds of stored record. Each has a tag (its byte in the envelope, fixed forever)
/// and a format version (bumped whenever its stored shape changes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordKind {
    /// One group commit of one partition (`storage::WalRecord`).
    WalBatch,
    /// A partition snapshot as stored (`storage::SnapshotRecord`).
    Snapshot,
    /// The partition state inside a snapshot (`machine::PartitionState::snapshot_bytes`).
    PartitionState,
    /// One archived finished transfer (`command::FinishedTransfer`).
    ArchiveRecord,
    /// What is known about one archive run (`storage::archive::RunMeta`).
    ArchiveRunMeta,
    /// One settlement window of the hub's settlement book (`settlement::WindowRecord`).
    SettlementWindow,
    /// One settlement of the hub's settlement book (`settlement::SettlementRecord`).
    Settlement,
    /// Entries of the position ledger of one account and minute (`storage::ledger`).
    LedgerChunk,
}

impl RecordKind {
    pub const ALL: [RecordKind; 8] = [
        RecordKind::WalBatch,
        RecordKind::Snapshot,
        RecordKind::PartitionState,
        RecordKind::ArchiveRecord,
        RecordKind::ArchiveRunMeta,
        RecordKind::SettlementWindow,
        RecordKind::Settlement,
        RecordKind::LedgerChunk,
    ];

    /// The kind's byte in the envelope. Fixed forever: a retired kind's tag stays unused.
    pub const fn tag(self) -> u8 {
        match self {
            RecordKind::WalBatch => 1,
            RecordKind::Snapshot => 2,
            RecordKind::PartitionState => 3,
            RecordKind::ArchiveRecord => 4,
            RecordKind::ArchiveRunMeta => 5,
            RecordKind::SettlementWindow => 6,
            RecordKind::Settlement => 7,
            RecordKind::LedgerChunk => 8,
        }
    }

    /// The format version this build writes (and the newest it reads). Version 1 of every
    /// kind is the first MessagePack format.
    pub const fn version(self) -> u8 {
        match self {
            RecordKind::WalBatch => 1,
            // 2: the position ledger's entries not yet written appended.
            RecordKind::Snapshot => 2,
            // 2: the settlement book (machine::settlement) and the inactive accounts
            // appended. 3: the clock of the position ledger appended.
            RecordKind::PartitionState => 3,
            RecordKind::ArchiveRecord => 1,
            RecordKind::ArchiveRunMeta => 1,
            RecordKind::SettlementWindow => 1,
            RecordKind::Settlement => 1,
            RecordKind::LedgerChunk => 1,
        }
    }

    pub fn from_tag(tag: u8) -> Option<RecordKind> {
        RecordKind::ALL.into_iter().find(|kind| kind.tag() == tag)
    }

    /// The name errors use.
    pub const fn name(self) -> &'static str {
        match self {
            RecordKind::WalBatch => "WAL batch",
            RecordKind::Snapshot => "snapshot",
            RecordKind::PartitionState => "partition state",
            RecordKind::ArchiveRecord => "archived transfer",
            RecordKind::ArchiveRunMeta => "archive run meta",
            RecordKind::SettlementWindow => "settlement window",
            RecordKind::Settlement => "settlement",
            RecordKind::LedgerChunk => "ledger chunk",
        }
    }
}

// Every engine kind tag is in the engine's range, never in `sharding`'s.
const _: () = {
    let mut i = 0;
    while i < RecordKind::ALL.len() {
        let tag = RecordKind::ALL[i].tag();
        assert!(tag >= *ENGINE_TAGS.start() && tag <= *ENGINE_TAGS.end());
        i += 1;
    }
};

impl fmt::Display for RecordKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a record could not be encoded or was refused. Every variant names the record kind
/// the caller asked for.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("cannot encode {kind} record: {source}")]
    Encode {
        kind: RecordKind,
        source: rmp_serde::encode::Error,
    },
    #[error(
        "{kind} record truncated: {len} bytes, shorter than its {ENVELOPE_BYTES}-byte envelope"
    )]
    Truncated { kind: RecordKind, len: usize },
    #[error("{kind} record has no envelope: first byte {first:#04x}, not {ENVELOPE_MAGIC:#04x}")]
    NoEnvelope { kind: RecordKind, first: u8 },
    #[error("expected a {expected} record, found {}", found_kind(*found_tag))]
    WrongKind { expected: RecordKind, found_tag: u8 },
    #[error(
        "{kind} record has format version {found}; this build reads {}",
        versions(*oldest, *newest)
    )]
    UnknownVersion {
        kind: RecordKind,
        found: u8,
        /// The versions the refusing reader knows, oldest to newest.
        oldest: u8,
        newest: u8,
    },
    #[error("{kind} record version {version}: malformed body: {source}")]
    Body {
        kind: RecordKind,
        version: u8,
        source: rmp_serde::decode::Error,
    },
    #[error("{kind} record version {version}: {trailing} unexpected bytes after its body")]
    TrailingBytes {
        kind: RecordKind,
        version: u8,
        trailing: usize,
    },
}

fn found_kind(tag: u8) -> String {
    match RecordKind::from_tag(tag) {
        Some(kind) => format!("a {kind} record (kind tag {tag})"),
        None => format!("unknown record kind tag {tag}"),
    }
}

fn versions(oldest: u8, newest: u8) -> String {
    if oldest == newest {
        format!("version {newest} only")
    } else {
        format!("versions {oldest} to {newest}")
    }
}

/// Encodes `value` as a record of `kind` in its current version: envelope, then body.
pub fn encode_record<T: Serialize + ?Sized>(
    kind: RecordKind,
    value: &T,
) -> Result<Vec<u8>, CodecError> {
    let mut bytes = Vec::with_capacity(ENVELOPE_BYTES + 128);
    encode_record_into(kind, value, &mut bytes)?;
    Ok(bytes)
}

/// [`encode_record`] into a buffer the caller keeps (cleared first). The group commit
/// encodes one batch of up to thousands of commands per round: growing a fresh vector
/// by doubling for each one cost a memmove per doubling and fresh pages for the kernel
/// to zero, about a tenth of the engine benchmark's CPU time.
pub fn encode_record_into<T: Serialize + ?Sized>(
    kind: RecordKind,
    value: &T,
    bytes: &mut Vec<u8>,
) -> Result<(), CodecError> {
    bytes.clear();
    bytes.extend_from_slice(&[ENVELOPE_MAGIC, kind.tag(), kind.version()]);
    let mut serializer = rmp_serde::Serializer::new(&mut *bytes).with_bytes(BytesMode::ForceAll);
    value
        .serialize(&mut serializer)
        .map_err(|source| CodecError::Encode { kind, source })
}

/// Decodes a record of `kind` written in its current version. Refuses another kind,
/// another version, a missing or truncated envelope, a malformed body and trailing bytes.
pub fn decode_record<T: DeserializeOwned>(kind: RecordKind, bytes: &[u8]) -> Result<T, CodecError> {
    let (version, body) = open_record(kind, bytes)?;
    if version != kind.version() {
        return Err(CodecError::UnknownVersion {
            kind,
            found: version,
            oldest: kind.version(),
            newest: kind.version(),
        });
    }
    decode_body(kind, version, body)
}

/// Checks the envelope of a record of `kind` and returns its version (1 up to the current
/// one) and its body. For readers that still convert older versions (see the module doc).
pub fn open_record(kind: RecordKind, bytes: &[u8]) -> Result<(u8, &[u8]), CodecError> {
    let Some((envelope, body)) = bytes.split_first_chunk::<ENVELOPE_BYTES>() else {
        return Err(CodecError::Truncated {
            kind,
            len: bytes.len(),
        });
    };
    let [magic, tag, version] = *envelope;
    if magic != ENVELOPE_MAGIC {
        return Err(CodecError::NoEnvelope { kind, first: magic });
    }
    if tag != kind.tag() {
        return Err(CodecError::WrongKind {
            expected: kind,
            found_tag: tag,
        });
    }
    if version == 0 || version > kind.version() {
        return Err(CodecError::UnknownVersion {
            kind,
            found: version,
            oldest: 1,
            newest: kind.version(),
        });
    }
    Ok((version, body))
}

/// Decodes the MessagePack body of a record (what [`open_record`] returned), refusing
/// trailing bytes.
pub fn decode_body<T: DeserializeOwned>(
    kind: RecordKind,
    version: u8,
    body: &[u8],
) -> Result<T, CodecError> {
    let mut deserializer = rmp_serde::Deserializer::new(std::io::Cursor::new(body));
    let value = T::deserialize(&mut deserializer).map_err(|source| CodecError::Body {
        kind,
        version,
        source,
    })?;
    // The cursor never passes the end of the body it reads.
    let read = usize::try_from(deserializer.position()).unwrap_or(usize::MAX);
    assert!(read <= body.len(), "decoder read past the body");
    if read != body.len() {
        return Err(CodecError::TrailingBytes {
            kind,
            version,
            trailing: body.len() - read,
        });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_distinct_and_round_trip() {
        for kind in RecordKind::ALL {
            assert_eq!(RecordKind::from_tag(kind.tag()), Some(kind));
            assert!(kind.version() >= 1);
        }
        assert_eq!(RecordKind::from_tag(0), None);
    }

    #[test]
    fn envelope_and_body() {
        let bytes =
            encode_record(RecordKind::ArchiveRunMeta, &(7u64, vec![1u8, 200])).expect("enc");
        // Envelope, then a 2-array: 7, bin of 2 bytes.
        assert_eq!(bytes, [0xC1, 5, 1, 0x92, 0x07, 0xC4, 0x02, 0x01, 0xC8]);
        let back: (u64, Vec<u8>) = decode_record(RecordKind::ArchiveRunMeta, &bytes).expect("dec");
        assert_eq!(back, (7, vec![1, 200]));
    }

    #[test]
    fn refusals_name_the_kind() {
        let bytes = encode_record(RecordKind::Snapshot, &1u8).expect("enc");
        let wrong = decode_record::<u8>(RecordKind::WalBatch, &bytes).expect_err("wrong kind");
        assert!(matches!(wrong, CodecError::WrongKind { found_tag: 2, .. }));
        assert_eq!(
            wrong.to_string(),
            "expected a WAL batch record, found a snapshot record (kind tag 2)"
        );
        let short = decode_record::<u8>(RecordKind::Snapshot, &bytes[..2]).expect_err("short");
        assert!(
            matches!(short, CodecError::Truncated { len: 2, .. }),
            "{short}"
        );
        let bare = decode_record::<u8>(RecordKind::Snapshot, &[0x01]).expect_err("bare");
        assert!(
            matches!(bare, CodecError::Truncated { len: 1, .. }),
            "{bare}"
        );
        let unwrapped = decode_record::<u8>(RecordKind::Snapshot, &[0x93, 1, 2, 3]);
        assert!(matches!(
            unwrapped,
            Err(CodecError::NoEnvelope { first: 0x93, .. })
        ));
        let mut trailing = bytes.clone();
        trailing.push(0);
        let err = decode_record::<u8>(RecordKind::Snapshot, &trailing).expect_err("trailing");
        assert!(
            matches!(err, CodecError::TrailingBytes { trailing: 1, .. }),
            "{err}"
        );
        let mut garbled = bytes;
        garbled[3] = 0xC3; // `true` where a u8 belongs
        let err = decode_record::<u8>(RecordKind::Snapshot, &garbled).expect_err("garbled");
        assert!(matches!(err, CodecError::Body { version: 2, .. }), "{err}");
        let zero = decode_record::<u8>(RecordKind::Snapshot, &[0xC1, 2, 0, 1]).expect_err("v0");
        assert!(
            matches!(zero, CodecError::UnknownVersion { found: 0, .. }),
            "{zero}"
        );
    }
}
