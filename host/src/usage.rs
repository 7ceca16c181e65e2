//! Usage queries, apart from HTTP: resolve the meter, read the records of
//! the range (and the levels in force when it starts), and let the pure
//! meter engine aggregate them.

use std::sync::Arc;

use rust_decimal::Decimal;

use crate::meter::period::{Range, WindowSize};
use crate::meter::{self, EngineError, MeterDef, UsageQuery};
use crate::record::valid_attribute_key;
use crate::store::{PointQuery, Store, StoreError};

#[derive(Debug, Clone)]
pub struct UsageRequest {
    pub org_id: String,
    pub meter: String,
    pub range: Range,
    pub window: Option<WindowSize>,
    pub group_by: Option<String>,
}

#[derive(Debug, Clone)]
pub struct UsageAnswer {
    pub meter: MeterDef,
    pub total: Decimal,
    pub windows: Vec<meter::WindowValue>,
}

#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    #[error("unknown meter {meter:?}; known meters: {known}")]
    UnknownMeter { meter: String, known: String },
    #[error("group_by {0:?} is not an attribute name (1-64 characters of a-z, A-Z, 0-9, '_', '-', '.', ':')")]
    BadGroupBy(String),
    #[error("{0}")]
    Engine(#[from] EngineError),
    #[error("{0}")]
    Store(#[from] StoreError),
}

pub struct UsageService {
    store: Arc<dyn Store>,
    /// Replaced as a whole when the config changes.
    meters: std::sync::RwLock<Arc<Vec<MeterDef>>>,
}

impl UsageService {
    pub fn new(store: Arc<dyn Store>, meters: Vec<MeterDef>) -> Self {
        Self { store, meters: std::sync::RwLock::new(Arc::new(meters)) }
    }

    fn meters(&self) -> Arc<Vec<MeterDef>> {
        self.meters.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces the meter definitions (config reload).
    pub fn set_meters(&self, meters: Vec<MeterDef>) {
        *self.meters.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(meters);
    }

    pub fn meter(&self, name: &str) -> Option<MeterDef> {
        self.meters().iter().find(|m| m.name == name).cloned()
    }

    pub async fn usage(&self, request: &UsageRequest, now_ms: i64) -> Result<UsageAnswer, UsageError> {
        let meters = self.meters();
        let meter = meters.iter().find(|m| m.name == request.meter).cloned().ok_or_else(|| {
            UsageError::UnknownMeter {
                meter: request.meter.clone(),
                known: meters.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(", "),
            }
        })?;
        if let Some(key) = &request.group_by
            && !valid_attribute_key(key)
        {
            return Err(UsageError::BadGroupBy(key.clone()));
        }
        let query = PointQuery {
            org_id: &request.org_id,
            metric: &meter.metric,
            range: request.range,
            group_by: request.group_by.as_deref(),
        };
        let points = self.store.points(&query).await?;
        let carry_in = match meter.aggregation {
            meter::Aggregation::Integral | meter::Aggregation::Latest | meter::Aggregation::Max => {
                self.store.carry_in(&query).await?
            }
            meter::Aggregation::Sum | meter::Aggregation::Count => Vec::new(),
        };
        let engine_query = UsageQuery {
            range: request.range,
            window: request.window,
            now_ms,
            grouped: request.group_by.is_some(),
        };
        let report = meter::aggregate(&meter, &engine_query, &carry_in, &points)?;
        Ok(UsageAnswer { meter, total: report.total, windows: report.windows })
    }
}
