//! Configuration: one TOML file, every key overridable by a `METERD_…`
//! environment variable, validated as a whole.
//!
//! Sources, in order: `--config PATH`, else `meterd.toml` in the working
//! directory if present, else built-in defaults; then the environment:
//! `METERD_<KEY>` for a top-level key (`METERD_ADMIN_TOKEN`), and
//! `METERD_PLUGINS__<PLUGIN>__<KEY>` for a plugin's section
//! (`METERD_PLUGINS__E2B__SIGNATURE_SECRET`). An error names the source, the
//! key and the problem.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::meter::{Aggregation, MeterDef, default_meters};
use crate::plans::PlanBook;
use crate::plans::rules::Rules;
use crate::plans::settings::{
    self as plan_settings, Amount, NotificationSettings, NotificationsFile, PlanFile,
};
use crate::plugin::PluginSettings;

pub const DEFAULT_FILE: &str = "meterd.toml";
/// At most this many `rollup_group_by` keys.
const MAX_ROLLUP_GROUP_BY: usize = 8;
const ENV_PREFIX: &str = "METERD_";
const PLUGIN_ENV_PREFIX: &str = "METERD_PLUGINS__";
/// `METERD_…` variables that are not configuration keys.
pub const RESERVED_ENV: [&str; 3] = ["METERD_LOG", LOG_FORMAT_ENV, TOKEN_ENV];

/// The variable that chooses the log format (read by `main`, not a config key).
pub const LOG_FORMAT_ENV: &str = "METERD_LOG_FORMAT";

/// The variable the CLI's gateway clients (`meterd replay`) take their
/// bearer token from (read by `main`, not a config key).
pub const TOKEN_ENV: &str = "METERD_TOKEN";

/// The validated configuration the gateway runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where it came from, for messages: a file path or "built-in defaults".
    pub source: String,
    /// The file it was read from, re-read on reload (`None`: no file).
    pub path: Option<PathBuf>,
    pub listen: SocketAddr,
    pub database: String,
    pub admin_token: Option<String>,
    pub plugins_dir: Option<PathBuf>,
    pub cache_dir: PathBuf,
    pub max_body_bytes: usize,
    pub plugin_timeout: Duration,
    pub plugin_memory_bytes: usize,
    /// How long raw webhook payloads are kept (their dedup keys stay).
    pub payload_retention: Duration,
    /// Each plugin's own section, flattened to dotted keys.
    pub plugins: BTreeMap<String, PluginSettings>,
    /// Built-in meters, overridden or extended by `[meters.<name>]`.
    pub meters: Vec<MeterDef>,
    /// Attribute keys whose grouped sums and counts are rolled up (see
    /// `meter::rollup::groups`); a change rebuilds the rollups at start-up.
    pub rollup_group_by: Vec<String>,
    /// Built-in plans overridden or extended by `[plans.<name>]`, prices.
    pub plans: PlanBook,
    /// `[notifications]`: thresholds, endpoints, retries.
    pub rules: Rules,
    pub notifications: NotificationSettings,
}

#[derive(Debug, thiserror::Error)]
#[error("config error in {source_name}: {problem}")]
pub struct ConfigError {
    pub source_name: String,
    pub problem: String,
}

/// The file's shape. Unknown keys are errors: a typo must not pass silently.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default = "default_listen")]
    listen: String,
    #[serde(default = "default_database")]
    database: String,
    #[serde(default)]
    admin_token: Option<String>,
    #[serde(default)]
    plugins_dir: Option<PathBuf>,
    #[serde(default = "default_cache_dir")]
    cache_dir: PathBuf,
    #[serde(default = "default_max_body_bytes")]
    max_body_bytes: u64,
    #[serde(default = "default_plugin_timeout_ms")]
    plugin_timeout_ms: u64,
    #[serde(default = "default_plugin_memory_mib")]
    plugin_memory_mib: u64,
    #[serde(default = "default_payload_retention")]
    payload_retention: String,
    #[serde(default)]
    plugins: BTreeMap<String, toml::Table>,
    #[serde(default)]
    meters: BTreeMap<String, MeterFile>,
    #[serde(default)]
    rollup_group_by: Vec<String>,
    #[serde(default)]
    default_plan: Option<String>,
    #[serde(default)]
    currency: Option<String>,
    #[serde(default)]
    prices: Option<BTreeMap<String, Amount>>,
    #[serde(default)]
    plans: BTreeMap<String, PlanFile>,
    #[serde(default)]
    notifications: Option<NotificationsFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MeterFile {
    metric: String,
    aggregation: Aggregation,
    unit: String,
}

fn default_listen() -> String {
    "127.0.0.1:8080".to_owned()
}
fn default_database() -> String {
    "sqlite://meterd.db".to_owned()
}
fn default_cache_dir() -> PathBuf {
    PathBuf::from(".meterd-cache")
}
fn default_payload_retention() -> String {
    "90d".to_owned()
}
fn default_max_body_bytes() -> u64 {
    1 << 20
}
fn default_plugin_timeout_ms() -> u64 {
    100
}
fn default_plugin_memory_mib() -> u64 {
    64
}

impl Config {
    /// Loads from `path` (or `meterd.toml` if present, or defaults) and the
    /// given environment.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let file = match path {
            Some(p) => Some(p.to_owned()),
            None if Path::new(DEFAULT_FILE).exists() => Some(PathBuf::from(DEFAULT_FILE)),
            None => None,
        };
        let (source_name, text) = match &file {
            Some(p) => (p.display().to_string(), Some(read(p)?)),
            None => ("built-in defaults".to_owned(), None),
        };
        let mut config = Self::parse(&source_name, text.as_deref().unwrap_or(""), env)?;
        config.path = file;
        Ok(config)
    }

    /// Parses and validates a whole configuration.
    pub fn parse(
        source_name: &str,
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let err = |problem: String| ConfigError { source_name: source_name.to_owned(), problem };
        let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| err(e.to_string()))?;
        let overridden = apply_env(&mut table, env).map_err(err)?;
        let file: File = serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            let key = e.path().to_string();
            let by_env = overridden.get(&key).map(|var| format!(" (set by {var})")).unwrap_or_default();
            err(format!("key `{key}`{by_env}: {}", e.inner()))
        })?;
        file.validate().map_err(err).map(|mut config| {
            config.source = source_name.to_owned();
            config
        })
    }

    /// Whether the listen address is reachable only from this machine.
    pub fn listens_on_loopback(&self) -> bool {
        self.listen.ip().is_loopback()
    }
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| ConfigError {
        source_name: path.display().to_string(),
        problem: format!("cannot read the file: {e}"),
    })
}

/// Writes `METERD_…` variables into the table. Returns which dotted key
/// each variable set, for error messages.
fn apply_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<BTreeMap<String, String>, String> {
    let mut overridden = BTreeMap::new();
    for (var, value) in env {
        if RESERVED_ENV.contains(&var.as_str()) {
            continue;
        }
        if let Some(rest) = var.strip_prefix(PLUGIN_ENV_PREFIX) {
            let (plugin, key) = rest
                .split_once("__")
                .filter(|(p, k)| !p.is_empty() && !k.is_empty())
                .ok_or_else(|| format!("{var}: expected METERD_PLUGINS__<PLUGIN>__<KEY>"))?;
            // Plugin names use '-' where variable names cannot: `_` stands for it.
            let plugin = plugin.to_ascii_lowercase().replace('_', "-");
            let key = key.to_ascii_lowercase().replace("__", ".");
            let plugins = table
                .entry("plugins")
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                .as_table_mut()
                .ok_or("`plugins` must be a table")?;
            let section = plugins
                .entry(plugin.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                .as_table_mut()
                .ok_or_else(|| format!("`plugins.{plugin}` must be a table"))?;
            section.insert(key.clone(), toml::Value::String(value));
            overridden.insert(format!("plugins.{plugin}.{key}"), var);
        } else if let Some(key) = var.strip_prefix(ENV_PREFIX) {
            let key = key.to_ascii_lowercase();
            let value = match key.as_str() {
                "max_body_bytes" | "plugin_timeout_ms" | "plugin_memory_mib" => value
                    .parse::<i64>()
                    .map(toml::Value::Integer)
                    .map_err(|_| format!("{var}: {value:?} is not a whole number"))?,
                // A list, comma-separated (empty: none).
                "rollup_group_by" => toml::Value::Array(
                    value
                        .split(',')
                        .map(str::trim)
                        .filter(|k| !k.is_empty())
                        .map(|k| toml::Value::String(k.to_owned()))
                        .collect(),
                ),
                _ => toml::Value::String(value),
            };
            overridden.insert(key.clone(), var);
            table.insert(key, value);
        }
    }
    Ok(overridden)
}

fn valid_name(name: &str, punctuation: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || punctuation.contains(&b))
}

/// Plugin names: a-z, 0-9 and '-'. No '_', so that a variable such as
/// `METERD_PLUGINS__S3_STORAGE__…` names exactly one plugin (`s3-storage`).
fn valid_plugin_name(name: &str) -> bool {
    valid_name(name, b"-")
}

/// Meter names: a-z, 0-9, '_' and '-'.
fn valid_meter_name(name: &str) -> bool {
    valid_name(name, b"_-")
}

impl File {
    fn validate(self) -> Result<Config, String> {
        let listen: SocketAddr = self.listen.parse().map_err(|_| {
            format!("key `listen`: {:?} is not an address such as 127.0.0.1:8080", self.listen)
        })?;
        if !["sqlite:", "postgres://", "postgresql://"].iter().any(|p| self.database.starts_with(p)) {
            return Err(format!(
                "key `database`: {:?} is not supported; use sqlite://PATH (e.g. sqlite://meterd.db) or postgres://USER@HOST/DB",
                self.database
            ));
        }
        let admin_token = self.admin_token.filter(|t| !t.is_empty());
        if admin_token.as_ref().is_some_and(|t| t.len() < 16) {
            return Err("key `admin_token`: must be at least 16 characters".to_owned());
        }
        if !listen.ip().is_loopback() && admin_token.is_none() {
            return Err(format!(
                "key `listen`: {listen} is reachable from other machines, so `admin_token` must be set"
            ));
        }
        if self.max_body_bytes == 0 {
            return Err("key `max_body_bytes`: must be greater than 0".to_owned());
        }
        if !(1..=60_000).contains(&self.plugin_timeout_ms) {
            return Err("key `plugin_timeout_ms`: must be between 1 and 60000".to_owned());
        }
        if !(1..=4096).contains(&self.plugin_memory_mib) {
            return Err("key `plugin_memory_mib`: must be between 1 and 4096".to_owned());
        }
        let payload_retention = crate::poller::parse_duration(&self.payload_retention)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                format!(
                    "key `payload_retention`: {:?} is not a duration above 0 such as 90d",
                    self.payload_retention
                )
            })?;
        let mut plugins = BTreeMap::new();
        for (name, section) in self.plugins {
            if !valid_plugin_name(&name) {
                return Err(format!("key `plugins.{name}`: plugin names use a-z, 0-9 and '-'"));
            }
            let mut flat = PluginSettings::new();
            flatten(&name, "", section, &mut flat)?;
            // Keys the host itself reads from a plugin's section.
            crate::outbound::HttpPolicy::from_settings(&flat).map_err(|e| format!("[plugins.{name}] {e}"))?;
            crate::poller::Schedule::from_settings(&flat).map_err(|e| format!("[plugins.{name}] {e}"))?;
            plugins.insert(name, flat);
        }
        let mut meters = default_meters();
        for (name, m) in self.meters {
            if !valid_meter_name(&name) {
                return Err(format!("key `meters.{name}`: meter names use a-z, 0-9, '_' and '-'"));
            }
            if m.metric.trim().is_empty() || m.unit.trim().is_empty() {
                return Err(format!("key `meters.{name}`: `metric` and `unit` must not be empty"));
            }
            let def =
                MeterDef { name: name.clone(), metric: m.metric, aggregation: m.aggregation, unit: m.unit };
            match meters.iter_mut().find(|d| d.name == name) {
                Some(existing) => *existing = def,
                None => meters.push(def),
            }
        }
        let mut rollup_group_by: Vec<String> = Vec::new();
        for key in self.rollup_group_by {
            if !crate::record::valid_attribute_key(&key) {
                return Err(format!(
                    "key `rollup_group_by`: {key:?} is not an attribute name (1-64 characters of a-z, A-Z, 0-9, '_', '-', '.', ':')"
                ));
            }
            if rollup_group_by.contains(&key) {
                return Err(format!("key `rollup_group_by`: {key:?} is listed twice"));
            }
            rollup_group_by.push(key);
        }
        if rollup_group_by.len() > MAX_ROLLUP_GROUP_BY {
            return Err(format!(
                "key `rollup_group_by`: at most {MAX_ROLLUP_GROUP_BY} keys (each costs every record a row write)"
            ));
        }
        let names: Vec<&str> = meters.iter().map(|m| m.name.as_str()).collect();
        let plans = plan_settings::validate(
            plan_settings::Sections {
                default_plan: self.default_plan,
                currency: self.currency,
                prices: self.prices,
                plans: self.plans,
                notifications: self.notifications,
            },
            &names,
        )?;
        Ok(Config {
            source: String::new(),
            path: None,
            listen,
            database: self.database,
            admin_token,
            plugins_dir: self.plugins_dir,
            cache_dir: self.cache_dir,
            max_body_bytes: usize::try_from(self.max_body_bytes)
                .map_err(|_| "key `max_body_bytes`: too large")?,
            plugin_timeout: Duration::from_millis(self.plugin_timeout_ms),
            plugin_memory_bytes: usize::try_from(self.plugin_memory_mib << 20)
                .map_err(|_| "key `plugin_memory_mib`: too large")?,
            payload_retention,
            plugins,
            meters,
            rollup_group_by,
            plans: plans.book,
            rules: plans.rules,
            notifications: plans.notifications,
        })
    }
}

/// Flattens a plugin section to dotted keys; arrays become JSON text.
fn flatten(plugin: &str, prefix: &str, table: toml::Table, out: &mut PluginSettings) -> Result<(), String> {
    for (key, value) in table {
        let dotted = if prefix.is_empty() { key } else { format!("{prefix}.{key}") };
        let text = match value {
            toml::Value::Table(inner) => {
                flatten(plugin, &dotted, inner, out)?;
                continue;
            }
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Datetime(d) => d.to_string(),
            toml::Value::Array(items) => {
                serde_json::to_string(&items).map_err(|e| format!("key `plugins.{plugin}.{dotted}`: {e}"))?
            }
        };
        out.insert(dotted, text);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::parse("test.toml", text, env.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn defaults_need_nothing() {
        let c = parse("", &[]).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.database, "sqlite://meterd.db");
        assert_eq!(c.max_body_bytes, 1 << 20);
        assert_eq!(c.plugin_timeout, Duration::from_millis(100));
        assert_eq!(c.payload_retention, Duration::from_secs(90 * 86_400));
        assert!(c.admin_token.is_none() && c.plugins_dir.is_none());
        assert!(c.meters.iter().any(|m| m.name == "sandbox_cpu_core_seconds"));
    }

    #[test]
    fn payload_retention_is_a_positive_duration() {
        assert_eq!(
            parse("payload_retention = \"36h\"", &[]).unwrap().payload_retention,
            Duration::from_secs(36 * 3600)
        );
        for bad in ["0d", "ninety days", "-1d"] {
            let e = parse(&format!("payload_retention = \"{bad}\""), &[]).unwrap_err().to_string();
            assert!(e.contains("key `payload_retention`") && e.contains(bad), "{e}");
        }
    }

    #[test]
    fn plugin_sections_flatten_and_env_overrides_them() {
        let c = parse(
            "[plugins.e2b]\nsignature_secret = \"from-file\"\n[plugins.e2b.nested]\nlimit = 5\nlist = [1, 2]\n",
            &[
                ("METERD_PLUGINS__E2B__SIGNATURE_SECRET", "from-env"),
                ("METERD_PLUGINS__E2B__ORG_METADATA_KEY", "tenant"),
                ("PATH", "/bin"),
                ("METERD_LOG", "debug"),
                // Read by `meterd replay`, not a config key.
                ("METERD_TOKEN", "mk_0123"),
            ],
        )
        .unwrap();
        let e2b = &c.plugins["e2b"];
        assert_eq!(e2b["signature_secret"], "from-env");
        assert_eq!(e2b["org_metadata_key"], "tenant");
        assert_eq!(e2b["nested.limit"], "5");
        assert_eq!(e2b["nested.list"], "[1,2]");
    }

    #[test]
    fn underscores_in_a_variables_plugin_name_stand_for_hyphens() {
        let c = parse(
            "[plugins.s3-storage]\nendpoint = \"http://127.0.0.1:9000\"\n[[plugins.s3-storage.targets]]\norg = \"acme\"\nbucket = \"b1\"\n",
            &[("METERD_PLUGINS__S3_STORAGE__SECRET_ACCESS_KEY", "from-env")],
        )
        .unwrap();
        let s3 = &c.plugins["s3-storage"];
        assert_eq!(s3["secret_access_key"], "from-env");
        assert_eq!(s3["targets"], r#"[{"bucket":"b1","org":"acme"}]"#);
        let err = parse("[plugins.s3_storage]\n", &[]).unwrap_err().to_string();
        assert!(err.contains("plugin names use a-z, 0-9 and '-'"), "{err}");
    }

    #[test]
    fn top_level_env_overrides_and_types_are_checked() {
        let c = parse(
            "listen = \"127.0.0.1:1\"",
            &[("METERD_LISTEN", "127.0.0.1:9999"), ("METERD_MAX_BODY_BYTES", "42")],
        )
        .unwrap();
        assert_eq!(c.listen.port(), 9999);
        assert_eq!(c.max_body_bytes, 42);
        let e = parse("", &[("METERD_MAX_BODY_BYTES", "lots")]).unwrap_err();
        assert!(e.to_string().contains("METERD_MAX_BODY_BYTES"), "{e}");
    }

    #[test]
    fn errors_name_the_file_the_key_and_the_problem() {
        let e = parse("lissen = \"x\"", &[]).unwrap_err().to_string();
        assert!(e.starts_with("config error in test.toml:") && e.contains("lissen"), "{e}");
        let e = parse("max_body_bytes = \"big\"", &[]).unwrap_err().to_string();
        assert!(e.contains("key `max_body_bytes`"), "{e}");
        let e = parse("listen = \"nowhere\"", &[]).unwrap_err().to_string();
        assert!(e.contains("key `listen`"), "{e}");
        let e = parse("database = \"mysql://x\"", &[]).unwrap_err().to_string();
        assert!(e.contains("key `database`"), "{e}");
        let e = parse("[meters.x]\nmetric = \"m\"\naggregation = \"median\"\nunit = \"u\"", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("meters.x.aggregation"), "{e}");
        let e = parse("listen = [", &[]).unwrap_err().to_string();
        assert!(e.starts_with("config error in test.toml:"), "{e}");
    }

    #[test]
    fn refuses_a_public_listen_address_without_an_admin_token() {
        let e = parse("listen = \"0.0.0.0:8080\"", &[]).unwrap_err().to_string();
        assert!(e.contains("admin_token"), "{e}");
        let c = parse("listen = \"0.0.0.0:8080\"\nadmin_token = \"0123456789abcdef\"", &[]).unwrap();
        assert!(!c.listens_on_loopback());
        assert!(parse("admin_token = \"short\"", &[]).is_err());
    }

    /// The README's "Plans and quotas" block is the default config, exactly.
    #[test]
    fn the_readmes_plan_defaults_are_the_built_in_ones() {
        let readme = include_str!("../../README.md");
        let section = &readme[readme.find("## Plans and quotas").expect("README has the section")..];
        let start = section.find("```toml\n").expect("a toml block") + "```toml\n".len();
        let block = &section[start..start + section[start..].find("```").expect("block end")];
        let documented = parse(block, &[]).unwrap();
        let defaults = parse("", &[]).unwrap();
        assert_eq!(documented.plans, defaults.plans);
        assert_eq!(documented.rules, defaults.rules);
        assert_eq!(documented.notifications, defaults.notifications);
    }

    #[test]
    fn rollup_group_by_is_a_list_of_attribute_keys_from_the_file_or_the_environment() {
        assert!(parse("", &[]).unwrap().rollup_group_by.is_empty());
        let c = parse("rollup_group_by = [\"template_id\", \"region\"]", &[]).unwrap();
        assert_eq!(c.rollup_group_by, ["template_id", "region"]);
        let c = parse("", &[("METERD_ROLLUP_GROUP_BY", "template_id, kill_reason")]).unwrap();
        assert_eq!(c.rollup_group_by, ["template_id", "kill_reason"]);
        let e = parse("rollup_group_by = [\"a b\"]", &[]).unwrap_err().to_string();
        assert!(e.contains("rollup_group_by") && e.contains("not an attribute name"), "{e}");
        let e = parse("rollup_group_by = [\"x\", \"x\"]", &[]).unwrap_err().to_string();
        assert!(e.contains("listed twice"), "{e}");
        let many: Vec<String> = (0..9).map(|i| format!("\"k{i}\"")).collect();
        let e = parse(&format!("rollup_group_by = [{}]", many.join(", ")), &[]).unwrap_err().to_string();
        assert!(e.contains("at most 8"), "{e}");
    }

    #[test]
    fn meters_from_config_override_and_extend_the_defaults() {
        let c = parse(
            "[meters.sandbox_active]\nmetric = \"sandbox_active\"\naggregation = \"max\"\nunit = \"boxes\"\n[meters.egress_bytes]\nmetric = \"egress\"\naggregation = \"sum\"\nunit = \"bytes\"\n",
            &[],
        )
        .unwrap();
        let active = c.meters.iter().find(|m| m.name == "sandbox_active").unwrap();
        assert_eq!((active.aggregation, active.unit.as_str()), (Aggregation::Max, "boxes"));
        assert!(c.meters.iter().any(|m| m.name == "egress_bytes" && m.metric == "egress"));
    }
}

/// The `[plans]`, `[prices]` and `[notifications]` sections
/// (`plans::settings`) as the config file gives them.
#[cfg(test)]
mod plan_settings_tests {
    use std::collections::BTreeMap;

    use rust_decimal::Decimal;

    use super::{Config, ConfigError};
    use crate::plans::rules::Rules;
    use crate::plans::{Enforcement, Quota};

    const CPU: &str = "sandbox_cpu_core_seconds";
    const RAM: &str = "sandbox_ram_gibi_seconds";

    fn d(s: &str) -> Decimal {
        meterd_units::parse_quantity(s).expect("valid test decimal")
    }

    fn rules(quota_percent: &[u32], credit_below: &[&str]) -> Rules {
        Rules {
            quota_percent: quota_percent.to_vec(),
            credit_below: credit_below.iter().map(|s| d(s)).collect(),
            concurrency_limit: true,
            session_over_limit: true,
        }
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse("test.toml", text, std::iter::empty::<(String, String)>())
    }

    fn parse_err(text: &str) -> String {
        parse(text).expect_err("config is refused").to_string()
    }

    /// Without any section: E2B's tiers, E2B's prices, hobby by default, USD,
    /// 80 % and 100 % quota notices.
    #[test]
    fn default_plans_are_the_e2b_tiers() {
        let c = parse("").unwrap();
        let book = &c.plans;
        assert_eq!(book.default_plan(), "hobby");
        assert_eq!(book.currency(), "USD");
        assert_eq!(book.names(), "enterprise, hobby, pro");
        let limits = |name: &str| {
            let p = book.plan(name).unwrap();
            (p.max_concurrent_sandboxes, p.max_session_seconds, p.one_time_credit)
        };
        assert_eq!(limits("hobby"), (Some(20), Some(3_600), Some(d("100"))));
        assert_eq!(limits("pro"), (Some(100), Some(86_400), Some(d("100"))));
        assert_eq!(limits("enterprise"), (None, None, None));
        let prices = BTreeMap::from([(CPU.to_owned(), d("0.000014")), (RAM.to_owned(), d("0.0000045"))]);
        for p in book.plans() {
            assert_eq!(p.prices, prices, "{}", p.name);
            assert!(p.quotas.is_empty(), "{}", p.name);
        }
        assert_eq!(book.plan_for(None).name, "hobby");
        assert_eq!(book.plan_for(Some("pro")).name, "pro");
        assert_eq!(book.plan_for(Some("gone")).name, "hobby");
        assert_eq!(c.rules, rules(&[80, 100], &[]));
        assert!(c.notifications.endpoints.is_empty());
    }

    /// A plan's quota on a meter that does not exist is refused, naming the key.
    #[test]
    fn quota_on_an_unknown_meter_is_refused() {
        let e = parse_err("[plans.hobby.quotas.nope]\nlimit = 10\nenforcement = \"hard\"\n");
        assert!(e.contains("key `plans.hobby.quotas.nope`") && e.contains("no meter named \"nope\""), "{e}");
    }

    /// A TOML float is refused with a message saying to write a string;
    /// a string or whole number is read exactly.
    #[test]
    fn float_amounts_are_refused() {
        let e = parse_err("[plans.hobby]\none_time_credit = 1.5\n");
        assert!(e.contains("plans.hobby.one_time_credit") && e.contains("write amounts as strings"), "{e}");
        let c = parse("[plans.hobby]\none_time_credit = \"1.5\"\n").unwrap();
        assert_eq!(c.plans.plan("hobby").unwrap().one_time_credit, Some(d("1.5")));
        let e = parse_err("[prices]\nsandbox_cpu_core_seconds = 0.000014\n");
        assert!(
            e.contains("prices.sandbox_cpu_core_seconds") && e.contains("write amounts as strings"),
            "{e}"
        );
    }

    /// A webhook secret that is not `whsec_` + base64 of 24–64 bytes is refused;
    /// a good one is decoded.
    #[test]
    fn webhook_secrets_are_checked() {
        let endpoint = |secret: &str| {
            format!(
                "[notifications.endpoints.ops]\nurl = \"https://hooks.example.com/meterd\"\nsecret = \"{secret}\"\n"
            )
        };
        for bad in ["nope", "whsec_not-base64!", "whsec_c2hvcnQ="] {
            let e = parse_err(&endpoint(bad));
            assert!(e.contains("notifications.endpoints.ops.secret") && e.contains("whsec_"), "{bad}: {e}");
        }
        let c = parse(&endpoint("whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3")).unwrap();
        assert_eq!(c.notifications.endpoints["ops"].key, b"0123456789abcdef01234567");
    }

    /// `default_plan` must name a plan.
    #[test]
    fn default_plan_must_exist() {
        let e = parse_err("default_plan = \"gold\"\n");
        assert!(e.contains("key `default_plan`") && e.contains("\"gold\""), "{e}");
        let c = parse("default_plan = \"pro\"\n").unwrap();
        assert_eq!(c.plans.default().name, "pro");
    }

    /// A `[plans.x]` section overrides that plan (or adds one) and keeps the
    /// other built-in plans; plan prices override the global table.
    #[test]
    fn plan_sections_override_and_extend() {
        let c = parse(
            "[plans.pro]\nmax_concurrent_sandboxes = 7\none_time_credit = \"25\"\n\
             [plans.pro.prices]\nsandbox_cpu_core_seconds = \"0.00001\"\n\
             [plans.pro.quotas.sandbox_cpu_core_seconds]\nlimit = \"3600.5\"\nenforcement = \"soft\"\n\
             [plans.team]\nmax_concurrent_sandboxes = 50\n",
        )
        .unwrap();
        let book = &c.plans;
        assert_eq!(book.names(), "enterprise, hobby, pro, team");
        let pro = book.plan("pro").unwrap();
        assert_eq!(pro.max_concurrent_sandboxes, Some(7));
        assert_eq!(pro.one_time_credit, Some(d("25")));
        assert_eq!(pro.prices[CPU], d("0.00001"));
        assert_eq!(pro.prices[RAM], d("0.0000045"));
        assert_eq!(pro.quotas[CPU], Quota { limit: d("3600.5"), enforcement: Enforcement::Soft });
        // The plans not named are the built-in ones.
        let hobby = book.plan("hobby").unwrap();
        assert_eq!((hobby.max_concurrent_sandboxes, hobby.one_time_credit), (Some(20), Some(d("100"))));
        assert_eq!(book.plan("enterprise").unwrap().max_concurrent_sandboxes, None);
        assert_eq!(book.plan("team").unwrap().max_concurrent_sandboxes, Some(50));
        assert_eq!(book.default_plan(), "hobby");
    }
}
