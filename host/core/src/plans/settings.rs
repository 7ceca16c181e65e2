//! The config file's `default_plan`, `currency`, `[prices]`, `[plans.*]` and
//! `[notifications]`, validated into a [`PlanBook`], notification
//! [`Rules`] and [`NotificationSettings`].
//!
//! Amounts are exact: write them as strings (`"0.000014"`) or whole
//! numbers; a TOML float is refused, because it is not exact.

use std::collections::BTreeMap;

use base64::Engine as _;
use rust_decimal::Decimal;
use serde::Deserialize;

use super::rules::Rules;
use super::{Enforcement, Plan, PlanBook, Quota};

/// An exact amount as written in the file: a string or a whole number.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Amount {
    Text(String),
    Whole(i64),
    Float(f64),
}

impl Amount {
    fn exact(&self, key: &str) -> Result<Decimal, String> {
        match self {
            Amount::Text(t) => {
                meterd_units::parse_quantity(t.trim()).map_err(|e| format!("key `{key}`: {e}"))
            }
            Amount::Whole(n) => Ok(Decimal::from(*n)),
            Amount::Float(f) => Err(format!(
                "key `{key}`: {f} is a float; write amounts as strings (e.g. \"{f}\") so they stay exact"
            )),
        }
    }

    fn non_negative(&self, key: &str) -> Result<Decimal, String> {
        let value = self.exact(key)?;
        if value.is_sign_negative() && !value.is_zero() {
            return Err(format!("key `{key}`: must not be negative"));
        }
        Ok(value)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanFile {
    #[serde(default)]
    quotas: BTreeMap<String, QuotaFile>,
    max_concurrent_sandboxes: Option<u64>,
    max_session_seconds: Option<u64>,
    max_sandbox_vcpu: Option<u64>,
    max_sandbox_memory_mb: Option<u64>,
    one_time_credit: Option<Amount>,
    #[serde(default)]
    prices: BTreeMap<String, Amount>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct QuotaFile {
    limit: Amount,
    enforcement: Enforcement,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotificationsFile {
    #[serde(default = "default_quota_percent")]
    quota_percent: Vec<u32>,
    #[serde(default)]
    credit_below: Vec<Amount>,
    #[serde(default = "yes")]
    concurrency_limit: bool,
    #[serde(default = "yes")]
    session_over_limit: bool,
    #[serde(default = "default_retry_schedule")]
    retry_schedule: Vec<String>,
    #[serde(default = "default_expire_after")]
    expire_after: String,
    #[serde(default = "default_sweep_interval")]
    sweep_interval: String,
    #[serde(default)]
    endpoints: BTreeMap<String, EndpointFile>,
}

impl Default for NotificationsFile {
    fn default() -> Self {
        NotificationsFile {
            quota_percent: default_quota_percent(),
            credit_below: Vec::new(),
            concurrency_limit: true,
            session_over_limit: true,
            retry_schedule: default_retry_schedule(),
            expire_after: default_expire_after(),
            sweep_interval: default_sweep_interval(),
            endpoints: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointFile {
    url: String,
    secret: String,
}

fn yes() -> bool {
    true
}
fn default_quota_percent() -> Vec<u32> {
    vec![80, 100]
}
fn default_retry_schedule() -> Vec<String> {
    ["5s", "5m", "30m", "2h", "5h", "10h", "10h"].map(str::to_owned).to_vec()
}
fn default_expire_after() -> String {
    "3d".to_owned()
}
fn default_sweep_interval() -> String {
    "5s".to_owned()
}

/// Where notifications go and how hard to try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotificationSettings {
    pub endpoints: BTreeMap<String, Endpoint>,
    /// Wait before retry n (1-based: `retry_schedule[n-1]`); after the last
    /// entry the last wait repeats until `expire_after_ms` has passed.
    pub retry_schedule_ms: Vec<i64>,
    pub expire_after_ms: i64,
    /// How often time-driven rules (sessions, integrals, credit) are checked.
    pub sweep_interval_ms: i64,
}

/// One receiver, signed the Standard Webhooks way with its secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub url: String,
    /// The key bytes: the base64 after `whsec_`.
    pub key: Vec<u8>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint").field("url", &self.url).field("key", &"<redacted>").finish()
    }
}

/// The built-in plans, modelled on E2B's published tiers (prices and
/// credits in USD): hobby (20 concurrent, 1 h sessions, $100 once), pro
/// (100 concurrent, 24 h sessions, $100 once), enterprise (no limits).
fn default_plans() -> BTreeMap<String, PlanFile> {
    let plan = |concurrent: Option<u64>, session: Option<u64>, credit: Option<i64>| PlanFile {
        quotas: BTreeMap::new(),
        max_concurrent_sandboxes: concurrent,
        max_session_seconds: session,
        max_sandbox_vcpu: None,
        max_sandbox_memory_mb: None,
        one_time_credit: credit.map(Amount::Whole),
        prices: BTreeMap::new(),
    };
    BTreeMap::from([
        ("hobby".to_owned(), plan(Some(20), Some(3_600), Some(100))),
        ("pro".to_owned(), plan(Some(100), Some(86_400), Some(100))),
        ("enterprise".to_owned(), plan(None, None, None)),
    ])
}

/// E2B's published rates: $0.000014 per vCPU-second, $0.0000045 per
/// GiB-second of RAM; storage is free.
fn default_prices() -> BTreeMap<String, Amount> {
    BTreeMap::from([
        ("sandbox_cpu_core_seconds".to_owned(), Amount::Text("0.000014".to_owned())),
        ("sandbox_ram_gibi_seconds".to_owned(), Amount::Text("0.0000045".to_owned())),
    ])
}

/// The sections this module reads, as deserialized from the file.
pub struct Sections {
    pub default_plan: Option<String>,
    pub currency: Option<String>,
    /// `None`: the built-in price table; a table replaces it.
    pub prices: Option<BTreeMap<String, Amount>>,
    /// Built-in plans overridden or extended by name.
    pub plans: BTreeMap<String, PlanFile>,
    pub notifications: Option<NotificationsFile>,
}

/// What the sections validate to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validated {
    pub book: PlanBook,
    pub rules: Rules,
    pub notifications: NotificationSettings,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-'))
}

/// Validates the sections against the configured meter names.
pub fn validate(sections: Sections, meters: &[&str]) -> Result<Validated, String> {
    let known_meter = |key: &str, meter: &str| {
        if meters.contains(&meter) {
            Ok(())
        } else {
            Err(format!("key `{key}`: no meter named {meter:?}; meters: {}", meters.join(", ")))
        }
    };
    let currency = sections.currency.unwrap_or_else(|| "USD".to_owned());
    if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(format!("key `currency`: {currency:?} is not a three-letter code such as \"USD\""));
    }
    let mut global_prices = BTreeMap::new();
    for (meter, price) in sections.prices.unwrap_or_else(default_prices) {
        let key = format!("prices.{meter}");
        known_meter(&key, &meter)?;
        global_prices.insert(meter, price.non_negative(&key)?);
    }
    let mut files = default_plans();
    files.extend(sections.plans);
    let mut plans = BTreeMap::new();
    for (name, file) in files {
        if !valid_name(&name) {
            return Err(format!("key `plans.{name}`: plan names use a-z, 0-9, '_' and '-'"));
        }
        let mut quotas = BTreeMap::new();
        for (meter, quota) in file.quotas {
            let key = format!("plans.{name}.quotas.{meter}");
            known_meter(&key, &meter)?;
            let limit = quota.limit.non_negative(&format!("{key}.limit"))?;
            quotas.insert(meter, Quota { limit, enforcement: quota.enforcement });
        }
        let mut prices = global_prices.clone();
        for (meter, price) in file.prices {
            let key = format!("plans.{name}.prices.{meter}");
            known_meter(&key, &meter)?;
            prices.insert(meter, price.non_negative(&key)?);
        }
        let one_time_credit = file
            .one_time_credit
            .map(|c| c.non_negative(&format!("plans.{name}.one_time_credit")))
            .transpose()?
            .filter(|c| !c.is_zero());
        plans.insert(
            name.clone(),
            Plan {
                name,
                quotas,
                max_concurrent_sandboxes: file.max_concurrent_sandboxes,
                max_session_seconds: file.max_session_seconds,
                max_sandbox_vcpu: file.max_sandbox_vcpu,
                max_sandbox_memory_mb: file.max_sandbox_memory_mb,
                one_time_credit,
                prices,
            },
        );
    }
    let default_plan = sections.default_plan.unwrap_or_else(|| "hobby".to_owned());
    let book =
        PlanBook::new(plans, default_plan, currency).map_err(|e| format!("key `default_plan`: {e}"))?;
    let (rules, notifications) = notifications(sections.notifications.unwrap_or_default())?;
    Ok(Validated { book, rules, notifications })
}

fn duration(key: &str, text: &str) -> Result<i64, String> {
    meterd_units::parse_duration_ms(text)
        .filter(|ms| *ms > 0)
        .ok_or_else(|| format!("key `{key}`: {text:?} is not a duration such as 500ms, 5s, 5m, 2h or 3d"))
}

fn notifications(file: NotificationsFile) -> Result<(Rules, NotificationSettings), String> {
    let mut quota_percent = file.quota_percent;
    if let Some(bad) = quota_percent.iter().find(|p| !(1..=1_000).contains(*p)) {
        return Err(format!("key `notifications.quota_percent`: {bad} is not between 1 and 1000"));
    }
    quota_percent.sort_unstable();
    quota_percent.dedup();
    let mut credit_below = file
        .credit_below
        .iter()
        .map(|a| a.exact("notifications.credit_below"))
        .collect::<Result<Vec<_>, _>>()?;
    credit_below.sort_unstable();
    credit_below.dedup();
    let rules = Rules {
        quota_percent,
        credit_below,
        concurrency_limit: file.concurrency_limit,
        session_over_limit: file.session_over_limit,
    };
    let retry_schedule_ms = file
        .retry_schedule
        .iter()
        .map(|t| duration("notifications.retry_schedule", t))
        .collect::<Result<Vec<_>, _>>()?;
    if retry_schedule_ms.is_empty() {
        return Err("key `notifications.retry_schedule`: needs at least one wait".to_owned());
    }
    let mut endpoints = BTreeMap::new();
    for (name, e) in file.endpoints {
        let key = format!("notifications.endpoints.{name}");
        if !valid_name(&name) {
            return Err(format!("key `{key}`: endpoint names use a-z, 0-9, '_' and '-'"));
        }
        let url = url::Url::parse(&e.url).map_err(|err| format!("key `{key}.url`: {:?}: {err}", e.url))?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(format!("key `{key}.url`: {:?} is not an http(s) URL", e.url));
        }
        let key_bytes = e
            .secret
            .strip_prefix("whsec_")
            .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
            .filter(|k| (24..=64).contains(&k.len()))
            .ok_or_else(|| {
                format!(
                    "key `{key}.secret`: must be \"whsec_\" followed by the base64 of 24 to 64 random bytes (Standard Webhooks)"
                )
            })?;
        endpoints.insert(name, Endpoint { url: e.url, key: key_bytes });
    }
    Ok((
        rules,
        NotificationSettings {
            endpoints,
            retry_schedule_ms,
            expire_after_ms: duration("notifications.expire_after", &file.expire_after)?,
            sweep_interval_ms: duration("notifications.sweep_interval", &file.sweep_interval)?,
        },
    ))
}
