//! `GET /v1/orgs/{org}/usage` on the wire.

use serde::{Deserialize, Deserializer, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::text::{AttributeKey, Quantity, Time};
use crate::usage::{UsageAnswer, UsageRequest};

/// The query of `GET /v1/orgs/{org}/usage`. Every field is optional to
/// serde so that a missing `meter` gets its own message.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UsageParams {
    /// A configured meter, e.g. sandbox_cpu_core_seconds (the document lists them).
    #[param(required = true)]
    pub meter: Option<String>,
    /// Default: the UTC month of `to`, or of now.
    #[param(inline)]
    pub from: Option<Time>,
    /// Exclusive; after `from`. Default: the end of `from`'s month. At most
    /// 10,000 windows.
    #[param(inline)]
    pub to: Option<Time>,
    /// Parsed by `usage::parse_window` (shared with the CLI).
    #[param(inline, value_type = Option<WindowName>)]
    pub window: Option<String>,
    /// A record attribute to group each window by.
    #[param(inline)]
    pub group_by: Option<AttributeKey>,
}

/// The `window` parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum WindowName {
    Hour,
    Day,
    Month,
}

/// One window's value (one per group and window in a grouped answer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Window {
    pub start: Time,
    /// Exclusive.
    pub end: Time,
    /// Only in a grouped answer: the attribute's value, null for records
    /// without it.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "present")]
    #[schema(value_type = Option<String>, required = false)]
    pub group: Option<Option<String>>,
    pub value: Quantity,
}

/// A field that is there, even as null, is `Some`.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// The answer to a usage query.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Usage {
    pub org: String,
    pub meter: String,
    pub unit: String,
    pub from: Time,
    /// Exclusive.
    pub to: Time,
    pub total: Quantity,
    /// In time order; each window's groups in name order.
    pub windows: Vec<Window>,
}

impl Usage {
    pub fn new(request: &UsageRequest, answer: &UsageAnswer) -> Self {
        let grouped = request.group_by.is_some();
        Self {
            org: request.org_id.clone(),
            meter: answer.meter.name.clone(),
            unit: answer.meter.unit.clone(),
            from: Time::at(request.range.from_ms),
            to: Time::at(request.range.to_ms),
            total: Quantity::of(answer.total),
            windows: answer
                .windows
                .iter()
                .map(|w| Window {
                    start: Time::at(w.start_ms),
                    end: Time::at(w.end_ms),
                    group: grouped.then(|| w.group.clone()),
                    value: Quantity::of(w.value),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_names_its_group_only_in_grouped_answers() {
        let window = |group| Window {
            start: Time::at(0),
            end: Time::at(3_600_000),
            group,
            value: Quantity::of(rust_decimal::Decimal::ONE),
        };
        for (w, json) in [
            (window(None), r#"{"start":"1970-01-01T00:00:00Z","end":"1970-01-01T01:00:00Z","value":"1"}"#),
            (
                window(Some(None)),
                r#"{"start":"1970-01-01T00:00:00Z","end":"1970-01-01T01:00:00Z","group":null,"value":"1"}"#,
            ),
            (
                window(Some(Some("base".to_owned()))),
                r#"{"start":"1970-01-01T00:00:00Z","end":"1970-01-01T01:00:00Z","group":"base","value":"1"}"#,
            ),
        ] {
            assert_eq!(serde_json::to_string(&w).unwrap(), json);
            assert_eq!(serde_json::from_str::<Window>(json).unwrap(), w);
        }
    }
}
