//! The one place that states meterd's unit conversions and rounding rules.
//!
//! Both the host (meter engine, API) and the plugins (normalization) call
//! these functions, so a rule is written once and used everywhere.
//!
//! # Rules
//!
//! * **Quantities are exact decimals** ([`Decimal`], 96-bit mantissa, at most
//!   28 significant digits). Floats never carry a quantity.
//! * **Text form**: [`parse_quantity`] accepts `-?digits(.digits)?` only (no
//!   exponent, no `+`, no spaces); [`format_quantity`] prints the normalized
//!   value (no trailing fractional zeros, `0` for zero).
//! * **Conversions divide only by powers of two and ten**, so their exact
//!   results are finite decimals. A result that needs more digits than the
//!   96-bit mantissa holds (28 or 29 significant digits) is rounded to the
//!   nearest representable value, ties to even (rust_decimal's rule); that
//!   is a relative error below 10⁻²⁷, far beneath any provider's precision. Overflow (beyond ~7.9·10²⁸) is an error,
//!   never a wrap.
//! * **Time integrals** multiply a level by whole milliseconds and divide by
//!   1000 at the end, so `level × seconds` is exact.
//! * **Money** (estimated spend, credit balances) is kept exact: `usage ×
//!   price` and every sum of them are exact decimals, compared exactly
//!   (a balance "below 10" means the exact value). Only what is *shown* is
//!   rounded, by [`round_money`]: to [`MONEY_DECIMALS`] (6) places, ties to
//!   even. A value is rounded once, at the edge, never twice.
//!
//! Units: a "GiB" is 2³⁰ bytes, a "GB" is 10⁹ bytes, a "MiB"
//! ("memory_mb" in E2B's payload, which E2B documents as 1 GiB = 1,024 MiB)
//! is 2²⁰ bytes.

use rust_decimal::Decimal;

/// Why a quantity could not be read or computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error(
        "quantity {0:?} is not a decimal number (expected digits with an optional '-' and '.', e.g. \"144.246\")"
    )]
    Syntax(String),
    #[error("quantity {0:?} has more than 28 significant digits")]
    TooPrecise(String),
    #[error("arithmetic overflow computing {0}")]
    Overflow(&'static str),
}

const MS_PER_SECOND: i64 = 1_000;
const MIB_PER_GIB: i64 = 1_024;
const BYTES_PER_GB: i64 = 1_000_000_000;
const BYTES_PER_GIB: i64 = 1 << 30;

/// Parses a quantity's text form strictly (see the module rules).
pub fn parse_quantity(text: &str) -> Result<Decimal, QuantityError> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    let (int, frac) = match digits.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (digits, None),
    };
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(int) || frac.is_some_and(|f| !all_digits(f)) {
        return Err(QuantityError::Syntax(text.to_owned()));
    }
    // `from_str_exact` refuses to round: too many digits is an error, not a
    // silent loss of precision.
    Decimal::from_str_exact(text).map_err(|_| QuantityError::TooPrecise(text.to_owned()))
}

/// Reads a JSON number literal (`-?int(.frac)?([eE][+-]?digits)?`) exactly,
/// as providers' APIs send them (`7200.0`, `1.5e3`). Refuses what a decimal
/// cannot hold exactly instead of rounding it.
pub fn parse_json_number(text: &str) -> Result<Decimal, QuantityError> {
    let syntax = || QuantityError::Syntax(text.to_owned());
    let (mantissa, exponent) = match text.find(['e', 'E']) {
        Some(i) => {
            let exp = &text[i + 1..];
            let digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(syntax());
            }
            // An exponent beyond i64 is valid JSON: 0 with it is 0, anything
            // else is too large or too small (below).
            (&text[..i], exp.parse::<i64>().unwrap_or(i64::MAX))
        }
        None => (text, 0),
    };
    let unsigned = mantissa.strip_prefix('-').unwrap_or(mantissa);
    let int = unsigned.split('.').next().unwrap_or_default();
    if int.len() > 1 && int.starts_with('0') {
        return Err(syntax()); // JSON has no leading zeros
    }
    let written = parse_quantity(mantissa)?;
    if written.is_zero() {
        return Ok(Decimal::ZERO);
    }
    let too_precise = || QuantityError::TooPrecise(text.to_owned());
    if exponent.unsigned_abs() > 64 {
        return Err(too_precise());
    }
    let ten = Decimal::from(10);
    let mut value = written;
    for _ in 0..exponent.unsigned_abs() {
        value = if exponent > 0 { value.checked_mul(ten) } else { value.checked_div(ten) }
            .ok_or_else(too_precise)?;
    }
    // A division that had to round is not exact: multiplied back, the value
    // must be what was written. (Checking for 28 places missed a value that
    // rounded all the way to 0, such as 4.4e-37, even a negative one.)
    if exponent < 0 {
        let mut back = value;
        for _ in 0..exponent.unsigned_abs() {
            back = back.checked_mul(ten).ok_or_else(too_precise)?;
        }
        if back != written {
            return Err(too_precise());
        }
    }
    Ok(value)
}

/// A configured duration in milliseconds: `250ms`, `30s`, `15m`, `2h`,
/// `1d`, or a whole number of seconds. `None` for anything else.
pub fn parse_duration_ms(text: &str) -> Option<i64> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: i64 = number.parse().ok()?;
    let scale = match unit {
        "ms" => 1,
        "" | "s" => MS_PER_SECOND,
        "m" => 60 * MS_PER_SECOND,
        "h" => 3_600 * MS_PER_SECOND,
        "d" => 86_400 * MS_PER_SECOND,
        _ => return None,
    };
    n.checked_mul(scale)
}

/// Decimal places of money shown by the API and in notifications.
pub const MONEY_DECIMALS: u32 = 6;

/// The one rounding rule for money that is shown: [`MONEY_DECIMALS`]
/// places, half to even (banker's rounding, so rounding many values is not
/// biased upwards). Computation never rounds; see the module rules.
pub fn round_money(amount: Decimal) -> Decimal {
    amount.round_dp_with_strategy(MONEY_DECIMALS, rust_decimal::RoundingStrategy::MidpointNearestEven)
}

/// Money as shown: [`round_money`], then the canonical text form.
pub fn format_money(amount: Decimal) -> String {
    format_quantity(round_money(amount))
}

/// `quantity × unit price`: exact (an error only on overflow).
pub fn price(quantity: Decimal, unit_price: Decimal) -> Result<Decimal, QuantityError> {
    quantity.checked_mul(unit_price).ok_or(QuantityError::Overflow("quantity × price"))
}

/// The canonical text form of a quantity: normalized, `0` for zero.
pub fn format_quantity(value: Decimal) -> String {
    let normalized = value.normalize();
    if normalized.is_zero() { "0".to_owned() } else { normalized.to_string() }
}

/// `count × milliseconds` in count-seconds, e.g. vCPUs × execution time →
/// core-seconds. Exact.
pub fn count_ms_to_seconds(count: u64, ms: u64) -> Result<Decimal, QuantityError> {
    let product =
        Decimal::from(count).checked_mul(Decimal::from(ms)).ok_or(QuantityError::Overflow("count × ms"))?;
    ms_product_to_seconds(product)
}

/// `MiB × milliseconds` in GiB-seconds (÷1024 ÷1000). Exact: 1/1,024,000 has
/// a finite decimal expansion.
pub fn mib_ms_to_gib_seconds(mib: u64, ms: u64) -> Result<Decimal, QuantityError> {
    let product =
        Decimal::from(mib).checked_mul(Decimal::from(ms)).ok_or(QuantityError::Overflow("MiB × ms"))?;
    let gib_ms =
        product.checked_div(Decimal::from(MIB_PER_GIB)).ok_or(QuantityError::Overflow("MiB → GiB"))?;
    ms_product_to_seconds(gib_ms)
}

/// Decimal gigabyte-seconds (10⁹ B·s) in GiB-seconds (2³⁰ B·s):
/// `× 10⁹ / 2³⁰`, rounded as the module rules say when inexact.
pub fn gb_seconds_to_gib_seconds(gb_seconds: Decimal) -> Result<Decimal, QuantityError> {
    gb_seconds
        .checked_mul(Decimal::from(BYTES_PER_GB))
        .and_then(|bytes| bytes.checked_div(Decimal::from(BYTES_PER_GIB)))
        .ok_or(QuantityError::Overflow("GB·s → GiB·s"))
}

/// `level × milliseconds` in level-seconds: the time integral of a level.
pub fn level_ms_to_seconds(level: Decimal, ms: i64) -> Result<Decimal, QuantityError> {
    let product = level.checked_mul(Decimal::from(ms)).ok_or(QuantityError::Overflow("level × ms"))?;
    ms_product_to_seconds(product)
}

/// Divides an amount accumulated in `unit × ms` by 1000 to give `unit × s`.
/// Callers that sum many integrals accumulate in `× ms` and call this once.
pub fn ms_product_to_seconds(unit_ms: Decimal) -> Result<Decimal, QuantityError> {
    unit_ms.checked_div(Decimal::from(MS_PER_SECOND)).ok_or(QuantityError::Overflow("ms → s"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        parse_quantity(s).expect("valid test decimal")
    }

    #[test]
    fn money_is_shown_to_six_places_half_even() {
        assert_eq!(format_money(d("0.0000005")), "0");
        assert_eq!(format_money(d("0.0000015")), "0.000002");
        assert_eq!(format_money(d("0.0000025")), "0.000002");
        assert_eq!(format_money(d("-0.0000025")), "-0.000002");
        assert_eq!(format_money(d("1.2345675")), "1.234568");
        assert_eq!(format_money(d("100")), "100");
        // E2B's published example: 2 vCPU for an hour.
        assert_eq!(price(d("7200"), d("0.000014")).unwrap(), d("0.1008"));
        assert!(price(Decimal::MAX, d("2")).is_err());
    }

    #[test]
    fn parses_strict_decimal_text() {
        assert_eq!(d("144.246"), Decimal::new(144_246, 3));
        assert_eq!(d("-0.5"), Decimal::new(-5, 1));
        assert_eq!(d("0"), Decimal::ZERO);
        for bad in ["", "-", ".5", "5.", "1e3", "+1", " 1", "1,0", "NaN", "0x10", "1.2.3"] {
            assert!(matches!(parse_quantity(bad), Err(QuantityError::Syntax(_))), "{bad:?}");
        }
    }

    #[test]
    fn refuses_more_than_28_significant_digits_instead_of_rounding() {
        assert!(parse_quantity("1234567890123456789012345678").is_ok());
        assert!(matches!(
            parse_quantity("0.12345678901234567890123456789"),
            Err(QuantityError::TooPrecise(_))
        ));
    }

    #[test]
    fn reads_json_numbers_exactly() {
        assert_eq!(parse_json_number("7200.0").unwrap(), d("7200"));
        assert_eq!(parse_json_number("1.5e3").unwrap(), d("1500"));
        assert_eq!(parse_json_number("1E-2").unwrap(), d("0.01"));
        assert_eq!(parse_json_number("2e+1").unwrap(), d("20"));
        assert_eq!(parse_json_number("-0.0").unwrap(), Decimal::ZERO);
        assert_eq!(parse_json_number("0.1").unwrap(), d("0.1"));
        for bad in ["01", "1.", ".5", "NaN", "1e", "1e+", "+1", "1e1000", "0x1", ""] {
            assert!(parse_json_number(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn json_numbers_that_would_round_are_refused() {
        // Found by the daytona_analytics fuzz target: -4.4000003e-37 rounded
        // to 0 and was read as 0 (a negative total passing as none).
        for inexact in ["-4.4000003e-37", "4.4e-37", "1e-29", "1.5e-28", "123456789e-29"] {
            assert_eq!(
                parse_json_number(inexact),
                Err(QuantityError::TooPrecise(inexact.to_owned())),
                "{inexact}"
            );
        }
        assert_eq!(parse_json_number("123456789e-25").unwrap(), d("0.0000000000000000123456789"));
        assert_eq!(parse_json_number("1e-28").unwrap(), d("0.0000000000000000000000000001"));
        assert_eq!(parse_json_number("1000e-30").unwrap(), d("0.000000000000000000000000001"));
        assert_eq!(parse_json_number("-0e-40").unwrap(), Decimal::ZERO);
        // Found by the daytona_analytics fuzz target: zero with an exponent
        // beyond 64 (or beyond i64) is exactly zero, not an error.
        for zero in ["0.000e400000000000000000", "0e-99999999999999999999", "-0.0E+65"] {
            assert_eq!(parse_json_number(zero), Ok(Decimal::ZERO), "{zero}");
        }
        for huge in ["1e400000000000000000", "1e-99999999999999999999", "2E+65"] {
            assert_eq!(parse_json_number(huge), Err(QuantityError::TooPrecise(huge.to_owned())), "{huge}");
        }
    }

    #[test]
    fn parses_durations_in_the_usual_units() {
        let cases = [
            ("250ms", 250),
            ("30s", 30_000),
            ("15m", 900_000),
            ("2h", 7_200_000),
            ("1d", 86_400_000),
            ("45", 45_000),
            ("0m", 0),
        ];
        for (text, ms) in cases {
            assert_eq!(parse_duration_ms(text), Some(ms), "{text}");
        }
        for bad in ["", "m", "5 m", "5w", "-5s", "1.5h", "99999999999999999999d"] {
            assert_eq!(parse_duration_ms(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn formats_canonically() {
        assert_eq!(format_quantity(d("1.500")), "1.5");
        assert_eq!(format_quantity(d("0.000")), "0");
        assert_eq!(format_quantity(d("-0")), "0");
        assert_eq!(format_quantity(d("100")), "100");
    }

    #[test]
    fn core_seconds_from_execution_time_are_exact() {
        // The E2B fixture: 2 vCPU for 72,123 ms.
        assert_eq!(count_ms_to_seconds(2, 72_123).unwrap(), d("144.246"));
        assert_eq!(count_ms_to_seconds(1, 1).unwrap(), d("0.001"));
    }

    #[test]
    fn mib_ms_to_gib_seconds_is_exact() {
        // 512 MiB for 72,123 ms = 0.5 GiB × 72.123 s.
        assert_eq!(mib_ms_to_gib_seconds(512, 72_123).unwrap(), d("36.0615"));
        // The smallest step: 1 MiB for 1 ms = 1/1,024,000 GiB·s, a finite decimal.
        assert_eq!(mib_ms_to_gib_seconds(1, 1).unwrap(), d("0.0000009765625"));
        // Odd sizes stay exact: 3000 MiB × 7 ms.
        let v = mib_ms_to_gib_seconds(3_000, 7).unwrap();
        assert_eq!(v * Decimal::from(1_024_000), Decimal::from(21_000));
    }

    #[test]
    fn gb_to_gib_uses_the_exact_ratio() {
        // 10^9 / 2^30 = 0.931322574615478515625 exactly.
        assert_eq!(gb_seconds_to_gib_seconds(d("1")).unwrap(), d("0.931322574615478515625"));
        assert_eq!(gb_seconds_to_gib_seconds(d("1.073741824")).unwrap(), d("1"));
    }

    #[test]
    fn gb_to_gib_rounds_to_the_mantissa_when_inexact() {
        // 123456789.123 × 0.931322574615478515625 needs 33 significant digits.
        let v = gb_seconds_to_gib_seconds(d("123456789.123")).unwrap();
        // Exact: 114978094.699792563915252685546875 (33 digits); kept: 29.
        assert_eq!(format_quantity(v), "114978094.69979256391525268555");
    }

    #[test]
    fn level_integral_is_exact() {
        assert_eq!(level_ms_to_seconds(d("2"), 1_500).unwrap(), d("3"));
        assert_eq!(level_ms_to_seconds(d("1073741824"), 1).unwrap(), d("1073741.824"));
    }

    #[test]
    fn overflow_is_an_error() {
        assert!(matches!(level_ms_to_seconds(Decimal::MAX, 2), Err(QuantityError::Overflow(_))));
    }
}
