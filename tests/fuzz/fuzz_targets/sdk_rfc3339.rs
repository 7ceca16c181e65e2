//! The SDK's RFC 3339 reader and writer (`parse_rfc3339_ms`,
//! `format_rfc3339_ms`), which every plugin uses for event times.
//!
//! Properties: on any text, `parse_rfc3339_ms` agrees with a plain
//! reference reader (RFC 3339 §5.6 grammar, days counted another way):
//! what RFC 3339 refuses is refused, what it accepts gives the same
//! millisecond; any millisecond of years 0000-9999 is written in that
//! grammar and reads back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meterd_fuzz::reference_rfc3339_ms;
use meterd_plugin_sdk::time::{format_rfc3339_ms, parse_rfc3339_ms};

/// 0000-01-01T00:00:00Z and 9999-12-31T23:59:59.999Z.
const FIRST_MS: i64 = -62_167_219_200_000;
const LAST_MS: i64 = 253_402_300_799_999;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    assert_eq!(parse_rfc3339_ms(&text), reference_rfc3339_ms(&text), "{text:?}");

    // The first 8 bytes as a millisecond time, folded into years 0000-9999
    // most of the time, left as is otherwise.
    if let Some(raw) = data.get(..8) {
        let raw = i64::from_le_bytes(raw.try_into().unwrap());
        let ms = if raw & 1 == 0 { FIRST_MS + raw.rem_euclid(LAST_MS - FIRST_MS + 1) } else { raw };
        let written = format_rfc3339_ms(ms);
        if (FIRST_MS..=LAST_MS).contains(&ms) {
            assert_eq!(reference_rfc3339_ms(&written), Some(ms), "{ms} written as {written:?}");
            assert_eq!(parse_rfc3339_ms(&written), Some(ms), "{ms} written as {written:?}");
        } else {
            // Years outside 0000-9999 have no RFC 3339 form: not read back.
            assert_eq!(parse_rfc3339_ms(&written), None, "{ms} written as {written:?}");
        }
    }
});
