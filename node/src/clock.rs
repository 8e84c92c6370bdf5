//! The wall clock and fresh random ids, read by the edges only.
//!
//! The sans-IO core reads neither (time and random bytes are arguments of its
//! `handle_*` steps); the driver, the transports, the API and the binaries take
//! both from here, so every reading of the system clock or of the operating
//! system's RNG for an id is in one small module that imports nothing of the
//! crate.

use std::time::{SystemTime, UNIX_EPOCH};

use rand::RngCore as _;

/// Milliseconds since the Unix epoch, from the system clock (0 before 1970,
/// `u64::MAX` past the year 584 million).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// 16 random bytes for a new message, consent or delegation id, from the
/// operating system's RNG.
pub fn random_id_bytes() -> [u8; 16] {
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes
}
