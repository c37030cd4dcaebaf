//! The envelope of every record `sharding` writes to a log, in the engine's format.
//!
//! ```text
//! 0xC1 | kind tag | format version | MessagePack body (rmp-serde, compact form)
//! ```
//!
//! This is byte for byte the envelope of the engine's stored records (`engine::codec`):
//! `0xC1` is the one byte MessagePack never uses, so a bare MessagePack value is refused
//! at its first byte; structs are positional arrays; byte strings are MessagePack `bin`;
//! enum variants are written by name; trailing bytes are refused. A reader outside this
//! project (a reporting read side, an auditor's tool) reads our logs with any MessagePack
//! library and this page.
//!
//! # Kind tags: who owns which
//!
//! | tags          | owner                                                        |
//! | ------------- | ------------------------------------------------------------ |
//! | `0x01..=0x3F` | the engine's stored records (WAL batch, snapshot, ...)       |
//! | `0x40..=0x7F` | `sharding`: control-log records and event-log framing        |
//! | `0x80..=0xFF` | unassigned                                                   |
//!
//! A tag is never renumbered or reused. The engine's codec takes the magic byte and the
//! envelope's size from here and checks at compile time that its tags are in
//! [`ENGINE_TAGS`]; [`SHARDING_TAGS`] is checked by a test so this crate keeps to its own.
//! (The encode and open functions stay one per crate: each has its own error type, and
//! the engine cannot be a dependency of this crate, which it depends on.)
//!
//! # Versions
//!
//! Each kind has a format version, bumped when its stored shape changes. A reader refuses
//! version 0 and any version newer than it knows, naming the kind and both versions, so a
//! node of an older build never misreads a newer node's records: it stops, and the rolling
//! upgrade's rule (never own a partition whose records you cannot read) keeps it from
//! owning such a partition in the first place.

use rmp_serde::config::BytesMode;
use serde::{de::DeserializeOwned, Serialize};
use std::fmt;
use std::ops::RangeInclusive;

/// First byte of every envelope: the byte MessagePack never uses.
pub const ENVELOPE_MAGIC: u8 = 0xC1;
/// Magic, kind tag, version.
pub const ENVELOPE_BYTES: usize = 3;
/// The kind tags reserved for `sharding`.
pub const SHARDING_TAGS: RangeInclusive<u8> = 0x40..=0x7F;
/// The kind tags of the engine's stored records.
pub const ENGINE_TAGS: RangeInclusive<u8> = 0x01..=0x3F;

/// The kinds of record `sharding` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordKind {
    /// A node's heartbeat on the control log.
    Heartbeat,
    /// An assignment of a partition to a node on the control log.
    Assign,
    /// A node's drain or undrain on the control log.
    Drain,
    /// The `Epoch(e)` marker a new owner writes to `events[p]`.
    EpochMarker,
    /// One event record in `events[p]`, framed with its writer's epoch.
    EventFrame,
}

impl RecordKind {
    pub const ALL: [RecordKind; 5] = [
        RecordKind::Heartbeat,
        RecordKind::Assign,
        RecordKind::Drain,
        RecordKind::EpochMarker,
        RecordKind::EventFrame,
    ];

    /// The kind's byte in the envelope, in [`SHARDING_TAGS`]. Fixed forever.
    pub const fn tag(self) -> u8 {
        match self {
            RecordKind::Heartbeat => 0x40,
            RecordKind::Assign => 0x41,
            RecordKind::Drain => 0x42,
            RecordKind::EpochMarker => 0x50,
            RecordKind::EventFrame => 0x51,
        }
    }

    /// The format version this build writes, and the newest it reads.
    pub const fn version(self) -> u8 {
        match self {
            RecordKind::Heartbeat
            | RecordKind::Assign
            | RecordKind::Drain
            | RecordKind::EpochMarker
            | RecordKind::EventFrame => 1,
        }
    }

    pub fn from_tag(tag: u8) -> Option<RecordKind> {
        RecordKind::ALL.into_iter().find(|kind| kind.tag() == tag)
    }

    /// The name errors use.
    pub const fn name(self) -> &'static str {
        match self {
            RecordKind::Heartbeat => "heartbeat",
            RecordKind::Assign => "assign",
            RecordKind::Drain => "drain",
            RecordKind::EpochMarker => "epoch marker",
            RecordKind::EventFrame => "event frame",
        }
    }
}

impl fmt::Display for RecordKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a record's bytes were refused. [`crate::ShardingError::Record`] adds where the
/// record was (topic, partition, offset).
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("truncated: {len} bytes, shorter than the {ENVELOPE_BYTES}-byte envelope")]
    Truncated { len: usize },
    #[error("not a record of this hub: first byte {first:#04x}, not {ENVELOPE_MAGIC:#04x}")]
    NoEnvelope { first: u8 },
    #[error("expected {expected}, found {}", describe_tag(*found_tag))]
    WrongKind {
        expected: &'static str,
        found_tag: u8,
    },
    #[error("{kind} record has format version {found}; this build reads versions 1 to {newest}")]
    UnknownVersion {
        kind: RecordKind,
        found: u8,
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
    #[error("{kind} record version {version}: {reason}")]
    Invalid {
        kind: RecordKind,
        version: u8,
        reason: String,
    },
}

fn describe_tag(tag: u8) -> String {
    if let Some(kind) = RecordKind::from_tag(tag) {
        let article = if kind.name().starts_with(['a', 'e', 'i', 'o', 'u']) {
            "an"
        } else {
            "a"
        };
        format!("{article} {kind} record (kind tag {tag:#04x})")
    } else if ENGINE_TAGS.contains(&tag) {
        format!("an engine record (kind tag {tag:#04x}), foreign to this log")
    } else if SHARDING_TAGS.contains(&tag) {
        format!("kind tag {tag:#04x}, a record kind of a newer build")
    } else {
        format!("unknown kind tag {tag:#04x}")
    }
}

/// Appends the envelope and body of `value` as a record of `kind` to `bytes`.
pub(crate) fn encode<T: Serialize + ?Sized>(
    kind: RecordKind,
    value: &T,
) -> Result<Vec<u8>, rmp_serde::encode::Error> {
    let mut bytes = Vec::with_capacity(ENVELOPE_BYTES + 64);
    bytes.extend_from_slice(&[ENVELOPE_MAGIC, kind.tag(), kind.version()]);
    let mut serializer = rmp_serde::Serializer::new(&mut bytes).with_bytes(BytesMode::ForceAll);
    value.serialize(&mut serializer)?;
    Ok(bytes)
}

/// Checks the envelope and returns the record's kind and body. `expected` names what the
/// caller reads (for the error); `accept` says which kinds it takes.
pub(crate) fn open<'a>(
    bytes: &'a [u8],
    expected: &'static str,
    accept: &[RecordKind],
) -> Result<(RecordKind, &'a [u8]), RecordError> {
    let Some((envelope, body)) = bytes.split_first_chunk::<ENVELOPE_BYTES>() else {
        return Err(RecordError::Truncated { len: bytes.len() });
    };
    let [magic, tag, version] = *envelope;
    if magic != ENVELOPE_MAGIC {
        return Err(RecordError::NoEnvelope { first: magic });
    }
    let Some(kind) = RecordKind::from_tag(tag).filter(|kind| accept.contains(kind)) else {
        return Err(RecordError::WrongKind {
            expected,
            found_tag: tag,
        });
    };
    if version == 0 || version > kind.version() {
        return Err(RecordError::UnknownVersion {
            kind,
            found: version,
            newest: kind.version(),
        });
    }
    Ok((kind, body))
}

/// Decodes a body that [`open`] returned, refusing trailing bytes.
pub(crate) fn decode_body<T: DeserializeOwned>(
    kind: RecordKind,
    body: &[u8],
) -> Result<T, RecordError> {
    let version = kind.version();
    let mut deserializer = rmp_serde::Deserializer::new(std::io::Cursor::new(body));
    let value = T::deserialize(&mut deserializer).map_err(|source| RecordError::Body {
        kind,
        version,
        source,
    })?;
    let read = usize::try_from(deserializer.position()).unwrap_or(usize::MAX);
    if read < body.len() {
        return Err(RecordError::TrailingBytes {
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
    fn tags_are_distinct_in_range_and_round_trip() {
        for kind in RecordKind::ALL {
            assert!(SHARDING_TAGS.contains(&kind.tag()), "{kind}");
            assert_eq!(RecordKind::from_tag(kind.tag()), Some(kind));
            assert!(kind.version() >= 1);
        }
        let mut tags: Vec<u8> = RecordKind::ALL.iter().map(|k| k.tag()).collect();
        tags.sort_unstable();
        tags.dedup();
        assert_eq!(tags.len(), RecordKind::ALL.len());
    }

    #[test]
    fn refusals_say_why() {
        let ok = encode(RecordKind::Drain, &(1u8,)).expect("encode");
        let all = &RecordKind::ALL;
        assert!(open(&ok, "a control record", all).is_ok());
        let engine = [0xC1, 0x01, 1, 0x90];
        let err = open(&engine, "a control record", all).expect_err("engine record");
        assert_eq!(
            err.to_string(),
            "expected a control record, found an engine record (kind tag 0x01), foreign to this log"
        );
        let newer_kind = [0xC1, 0x7E, 1, 0x90];
        let err = open(&newer_kind, "a control record", all).expect_err("newer kind");
        assert!(err.to_string().contains("newer build"), "{err}");
        let future = [0xC1, 0x42, 9, 0x90];
        let err = open(&future, "a control record", all).expect_err("future");
        assert_eq!(
            err.to_string(),
            "drain record has format version 9; this build reads versions 1 to 1"
        );
        assert!(matches!(
            open(&[0xC1, 0x42], "x", all),
            Err(RecordError::Truncated { len: 2 })
        ));
        assert!(matches!(
            open(b"{\"json\":1}", "x", all),
            Err(RecordError::NoEnvelope { first: b'{' })
        ));
        assert!(matches!(
            decode_body::<(u8,)>(RecordKind::Drain, &[0x91, 0x01, 0x00]),
            Err(RecordError::TrailingBytes { trailing: 1, .. })
        ));
    }
}
