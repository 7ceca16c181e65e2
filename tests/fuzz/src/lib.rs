//! What the fuzz targets share: a reader for their hand-laid inputs (so seeds
//! can be built from the real fixtures: a few control bytes, then a body),
//! the checks every usage record a plugin emits must pass, and small
//! reference computations written independently of the plugins' code.

use meterd_plugin_sdk::{UsageKind, UsageRecord};
use rust_decimal::Decimal;

/// Reads a fuzz input front to back; past the end every read gives zeros or
/// empty slices, so any input is a valid one.
pub struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    pub fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.byte(), self.byte()])
    }

    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }

    /// A length byte, then that many bytes.
    pub fn short(&mut self) -> &'a [u8] {
        let n = self.byte() as usize;
        self.take(n)
    }

    pub fn rest(&mut self) -> &'a [u8] {
        self.take(self.data.len())
    }
}

/// The longest event id, org id or subject the host accepts.
pub const MAX_ID_LEN: usize = 256;

/// What every record a plugin returns must satisfy whatever the input: the
/// host's own checks that do not depend on the provider's data (quantity
/// syntax, metric and attribute-key syntax, no repeated attribute, a level
/// has no window start), plus a non-negative quantity: no plugin emits
/// negative usage. Ids must be non-blank; their length is the host's to
/// refuse (a provider's 300-byte sandbox id is the provider's data).
pub fn check_record(r: &UsageRecord) {
    for (field, value) in [("event_id", &r.event_id), ("org_id", &r.org_id), ("subject", &r.subject)] {
        assert!(!value.trim().is_empty(), "{field} is blank in {r:?}");
    }
    assert!(
        !r.metric.is_empty()
            && r.metric.len() <= 128
            && r.metric.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')),
        "bad metric in {r:?}"
    );
    let quantity = meterd_units::parse_quantity(&r.quantity)
        .unwrap_or_else(|e| panic!("quantity {:?} is not exact decimal text: {e}", r.quantity));
    assert!(!quantity.is_sign_negative() || quantity.is_zero(), "negative quantity in {r:?}");
    assert_eq!(meterd_units::format_quantity(quantity), r.quantity, "quantity is not in canonical form");
    if r.kind == UsageKind::Level {
        assert_eq!(r.window_start, None, "a level with a window start: {r:?}");
    }
    let mut keys = std::collections::BTreeSet::new();
    for (key, _) in &r.attributes {
        assert!(
            !key.is_empty()
                && key.len() <= 64
                && key.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':')),
            "bad attribute key {key:?}"
        );
        assert!(keys.insert(key), "attribute {key:?} twice in {r:?}");
    }
}

/// `n / d` as exact decimal text when `d` divides a power of ten (≤ 10^20),
/// else `None`. Independent of rust_decimal: plain u128 arithmetic.
pub fn exact_quotient(n: u128, d: u128) -> Option<String> {
    let (int, mut rem) = (n / d, n % d);
    let mut frac = String::new();
    for _ in 0..20 {
        if rem == 0 {
            break;
        }
        rem *= 10;
        frac.push(char::from(b'0' + (rem / d) as u8));
        rem %= d;
    }
    if rem != 0 {
        return None;
    }
    Some(if frac.is_empty() { int.to_string() } else { format!("{int}.{frac}") })
}

/// Significant digits of decimal text (for "fits a 96-bit decimal exactly").
pub fn significant_digits(text: &str) -> usize {
    let digits: String = text.chars().filter(char::is_ascii_digit).collect();
    let digits = digits.trim_start_matches('0');
    if text.contains('.') { digits.len() } else { digits.trim_end_matches('0').len().max(1) }
}

/// A reference RFC 3339 reader: the grammar of RFC 3339 §5.6 (with `t` and
/// a space allowed for `T`, as the plugins accept), day counts by a
/// different method than the SDK's (days before the year by leap-year
/// counting, a month table), milliseconds truncated.
pub fn reference_rfc3339_ms(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let digits = |from: usize, to: usize| -> Option<i64> {
        let s = b.get(from..to)?;
        if !s.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(s.iter().fold(0i64, |acc, d| acc * 10 + i64::from(d - b'0')))
    };
    let year = digits(0, 4)?;
    let month = digits(5, 7)?;
    let day = digits(8, 10)?;
    let hour = digits(11, 13)?;
    let minute = digits(14, 16)?;
    let second = digits(17, 19)?;
    if b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') || b[13] != b':' || b[16] != b':'
    {
        return None;
    }
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    if !(1..=12).contains(&month) || day < 1 || day > month_days[month as usize - 1] {
        return None;
    }
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut i = 19;
    let mut millis = 0;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        let mut end = start;
        while b.get(end).is_some_and(u8::is_ascii_digit) {
            end += 1;
        }
        if end == start {
            return None;
        }
        for (k, weight) in [100, 10, 1].into_iter().enumerate() {
            if start + k < end {
                millis += i64::from(b[start + k] - b'0') * weight;
            }
        }
        i = end;
    }
    let offset_minutes = match &b[i..] {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let (h, m) = (digits(i + 1, i + 3)?, digits(i + 4, i + 6)?);
            if h > 23 || m > 59 {
                return None;
            }
            if *sign == b'-' { -(h * 60 + m) } else { h * 60 + m }
        }
        _ => return None,
    };
    // Days from 0000-01-01 to the first of `year`: 365 a year plus the leap
    // years before it (year 0 is one).
    let days_before = |y: i64| 365 * y + (y + 3) / 4 - (y + 99) / 100 + (y + 399) / 400;
    let day_of_year: i64 = month_days[..month as usize - 1].iter().sum::<i64>() + day - 1;
    let days = days_before(year) - days_before(1970) + day_of_year;
    let seconds = days * 86_400 + hour * 3_600 + minute * 60 + second - offset_minutes * 60;
    Some(seconds * 1_000 + millis)
}

/// The JSON value of a body a plugin accepted, for reading it back; `None`
/// when serde_json's `Value` cannot hold it although the plugin could read
/// it: serde_json does not check the fields a struct ignores, so a body may
/// carry invalid UTF-8, a lone surrogate escape or a number beyond f64
/// there. Invalid UTF-8 is replaced first (the fields a plugin reads are
/// checked strings, so they are not affected).
pub fn accepted_json(body: &[u8]) -> Option<serde_json::Value> {
    match serde_json::from_str(&String::from_utf8_lossy(body)) {
        Ok(value) => Some(value),
        Err(e)
            if ["surrogate", "unicode", "hex escape", "number out of range"]
                .iter()
                .any(|m| e.to_string().contains(m)) =>
        {
            None
        }
        Err(e) => panic!("the plugin accepted a body that is not JSON: {e}"),
    }
}

/// Whether `q` is within a relative `tolerance` of the float `v` (for
/// cross-checks against serde_json's f64 reading of the same number), or
/// within 10^-27 of it: a decimal has at most 28 places.
pub fn close_to(q: Decimal, v: f64, tolerance: f64) -> bool {
    let q: f64 = q.to_string().parse().unwrap_or(f64::NAN);
    (q - v).abs() <= tolerance * v.abs() + 1e-27
}

/// URL-style decoding as S3's `encoding-type=url` means it, written plainly:
/// `+` is a space, `%` takes exactly two hex digits, the result is UTF-8.
pub fn reference_url_decode(text: &str) -> Option<String> {
    let hex = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let mut out = Vec::new();
    let mut bytes = text.bytes();
    while let Some(c) = bytes.next() {
        match c {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = hex(bytes.next()?)?;
                let lo = hex(bytes.next()?)?;
                out.push(hi << 4 | lo);
            }
            c => out.push(c),
        }
    }
    String::from_utf8(out).ok()
}
