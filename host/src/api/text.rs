//! The text forms the API uses for times and decimals, each a newtype with
//! its schema, and the grammar a decimal in a request must follow. The
//! grammar is stated once here, as the pattern the OpenAPI document shows
//! and as the check the handlers run, so the document says exactly what
//! the server accepts.

use std::borrow::Cow;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, Schema, SchemaFormat, Type};

/// An RFC 3339 time in UTC, as the API shows every time.
pub use meterd_core::time::rfc3339;

/// A request decimal: 1–14 digits, optionally a point and 1–14 more. 28
/// digits at most always fit `rust_decimal` exactly, so a value matching
/// this never loses precision. (No sign: requests take no negative
/// quantity or amount.)
pub const REQUEST_DECIMAL_PATTERN: &str = r"^[0-9]{1,14}(\.[0-9]{1,14})?$";

fn string_schema(pattern: Option<&str>, format: Option<KnownFormat>, example: &str) -> RefOr<Schema> {
    let schema = ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(pattern)
        .format(format.map(SchemaFormat::KnownFormat))
        .examples([serde_json::Value::from(example)]);
    RefOr::T(Schema::Object(schema.build()))
}

/// Declares a `String` newtype on the wire, with its schema.
macro_rules! text_type {
    ($(#[$doc:meta])* $name:ident, $schema:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub String);

        impl utoipa::PartialSchema for $name {
            fn schema() -> RefOr<Schema> {
                $schema
            }
        }

        impl utoipa::ToSchema for $name {
            fn name() -> Cow<'static, str> {
                Cow::Borrowed(stringify!($name))
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

text_type!(
    /// An instant, RFC 3339 (answers: UTC with `Z`).
    Time,
    string_schema(None, Some(KnownFormat::DateTime), "2026-12-01T00:00:00Z")
);

text_type!(
    /// An exact decimal as answers show it: normalized, `0` for zero.
    Quantity,
    string_schema(Some(r"^-?[0-9]+(\.[0-9]+)?$"), None, "12.5")
);

text_type!(
    /// A quantity in a request, at least 0.
    RequestQuantity,
    string_schema(Some(REQUEST_DECIMAL_PATTERN), None, "2.5")
);

text_type!(
    /// An amount of money in a request, greater than 0. (That it is not all
    /// zeros, `"not": {"pattern": "^[0.]*$"}`, is added to the served
    /// document by `http::openapi::configured`: utoipa's model has no `not`.)
    Amount,
    string_schema(Some(REQUEST_DECIMAL_PATTERN), None, "50")
);

/// What [`Amount`]'s pattern allows but an amount may not be: zero.
pub const ZERO_PATTERN: &str = "^[0.]*$";

text_type!(
    /// A record attribute's name (`record::valid_attribute_key`).
    AttributeKey,
    string_schema(Some(r"^[A-Za-z0-9_.:-]{1,64}$"), None, "template_id")
);

impl Time {
    pub fn at(ms: i64) -> Self {
        Self(rfc3339(ms))
    }

    pub fn at_opt(ms: Option<i64>) -> Option<Self> {
        ms.map(Self::at)
    }
}

impl Quantity {
    pub fn of(value: Decimal) -> Self {
        Self(meterd_units::format_quantity(value))
    }

    /// Money, rounded by `meterd_units::round_money` for showing.
    pub fn money(value: Decimal) -> Self {
        Self(meterd_units::format_money(value))
    }
}

/// Parses a request decimal by the request grammar (a `RequestQuantity`
/// or an `Amount`); `name` is the field, for the message.
pub fn parse_decimal(name: &str, text: &str) -> Result<Decimal, String> {
    if text.starts_with('-') {
        return Err(format!("`{name}` {text:?} must not be negative"));
    }
    let (int, frac) = match text.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (text, None),
    };
    let part = |s: &str| (1..=14).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit());
    if !part(int) || frac.is_some_and(|f| !part(f)) {
        return Err(format!(
            "`{name}` {text:?} is not a decimal of 1-14 digits, optionally a point and 1-14 more, e.g. \"12.5\""
        ));
    }
    meterd_units::parse_quantity(text).map_err(|e| format!("`{name}`: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_grammar_is_the_pattern() {
        for ok in ["0", "12.5", "00000000000001.00000000000001", "99999999999999.99999999999999"] {
            assert!(parse_decimal("q", ok).is_ok(), "{ok}");
        }
        for bad in
            ["", "-1", ".5", "5.", "1e3", "+1", " 1", "1 ", "123456789012345", "1.123456789012345", "１"]
        {
            assert!(parse_decimal("q", bad).is_err(), "{bad}");
        }
        assert_eq!(parse_decimal("q", "0012.50"), Ok(Decimal::new(1250, 2)));
    }
}
