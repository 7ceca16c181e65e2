//! Meters: what is aggregated from stored usage records, and how.
//!
//! A meter names a metric and an [`Aggregation`]; [`aggregate`] turns the
//! metric's records for one organization into per-window values and a total.
//! Time arithmetic (billing periods, window boundaries) lives in [`period`];
//! unit and rounding rules live in `meterd_units`, never here.

pub mod merge;
pub mod period;
pub mod rollup;

mod engine;

#[cfg(test)]
mod tests;

pub use engine::{EngineError, Point, UsageQuery, UsageReport, WindowValue, aggregate};

/// How a record's quantity relates to time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// An amount used since the previous record (e.g. core-seconds); summed.
    Delta,
    /// A value in force from the record's time on (e.g. running sandboxes);
    /// integrated, sampled or maximized.
    Level,
}

impl Kind {
    /// The stored and wire spelling, identical to the serde form.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Delta => "delta",
            Kind::Level => "level",
        }
    }

    /// The inverse of [`Kind::as_str`]; exact spelling only, so one kind has
    /// one stored form.
    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "delta" => Some(Kind::Delta),
            "level" => Some(Kind::Level),
            _ => None,
        }
    }
}

/// How a meter reduces its metric's records within a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Aggregation {
    /// Sum of delta quantities.
    Sum,
    /// Time integral of the organization's level, in level × seconds.
    Integral,
    /// The organization's level just before the window ends.
    Latest,
    /// The organization's highest level during the window.
    Max,
    /// Number of records of either kind.
    Count,
}

#[cfg(any(test, feature = "testing"))]
impl Aggregation {
    /// Every aggregation, for tests that hold each to the engine.
    pub const ALL: [Aggregation; 5] =
        [Aggregation::Sum, Aggregation::Count, Aggregation::Integral, Aggregation::Latest, Aggregation::Max];
}

/// A named view of one metric.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MeterDef {
    pub name: String,
    pub metric: String,
    pub aggregation: Aggregation,
    /// Display unit of the meter's values; informational, never converted.
    pub unit: String,
}

/// Built-in meters (config may add or override by name):
///
/// | name                       | metric                     | aggregation | unit              |
/// |----------------------------|----------------------------|-------------|-------------------|
/// | `sandbox_cpu_core_seconds` | `sandbox_cpu_core_seconds` | Sum         | `vCPU-seconds`    |
/// | `sandbox_ram_gibi_seconds` | `sandbox_ram_gibi_seconds` | Sum         | `GiB-seconds`     |
/// | `sandbox_ssd_gibi_seconds` | `sandbox_ssd_gibi_seconds` | Sum         | `GiB-seconds`     |
/// | `sandbox_gpu_core_seconds` | `sandbox_gpu_core_seconds` | Sum         | `GPU-seconds`     |
/// | `sandbox_active`           | `sandbox_active`           | Latest      | `sandboxes`       |
/// | `sandbox_active_max`       | `sandbox_active`           | Max         | `sandboxes`       |
/// | `sandbox_active_seconds`   | `sandbox_active`           | Integral    | `sandbox-seconds` |
/// | `storage_bytes`            | `storage_bytes`            | Latest      | `bytes`           |
/// | `storage_byte_seconds`     | `storage_bytes`            | Integral    | `byte-seconds`    |
/// | `storage_objects`          | `storage_objects`          | Latest      | `objects`         |
pub fn default_meters() -> Vec<MeterDef> {
    let meter = |name: &str, metric: &str, aggregation, unit: &str| MeterDef {
        name: name.to_owned(),
        metric: metric.to_owned(),
        aggregation,
        unit: unit.to_owned(),
    };
    vec![
        meter("sandbox_cpu_core_seconds", "sandbox_cpu_core_seconds", Aggregation::Sum, "vCPU-seconds"),
        meter("sandbox_ram_gibi_seconds", "sandbox_ram_gibi_seconds", Aggregation::Sum, "GiB-seconds"),
        meter("sandbox_ssd_gibi_seconds", "sandbox_ssd_gibi_seconds", Aggregation::Sum, "GiB-seconds"),
        meter("sandbox_gpu_core_seconds", "sandbox_gpu_core_seconds", Aggregation::Sum, "GPU-seconds"),
        meter("sandbox_active", "sandbox_active", Aggregation::Latest, "sandboxes"),
        meter("sandbox_active_max", "sandbox_active", Aggregation::Max, "sandboxes"),
        meter("sandbox_active_seconds", "sandbox_active", Aggregation::Integral, "sandbox-seconds"),
        meter("storage_bytes", "storage_bytes", Aggregation::Latest, "bytes"),
        meter("storage_byte_seconds", "storage_bytes", Aggregation::Integral, "byte-seconds"),
        meter("storage_objects", "storage_objects", Aggregation::Latest, "objects"),
    ]
}
