//! The one binary encoding of everything the engine stores: bincode with variable-length
//! integers (small numbers and lengths take one byte), trailing bytes refused so that a
//! garbled record is detected rather than half-read.

use bincode::Options;
use serde::{de::DeserializeOwned, Serialize};

fn options() -> impl Options {
    bincode::DefaultOptions::new()
        .with_varint_encoding()
        .reject_trailing_bytes()
}

pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, bincode::Error> {
    options().serialize(value)
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, bincode::Error> {
    options().deserialize(bytes)
}
