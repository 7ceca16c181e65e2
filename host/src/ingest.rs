//! Push ingestion, apart from HTTP: a webhook goes to its plugin, the
//! records it yields are validated, and the delivery is committed (group
//! commit) before the caller gets a receipt. A redelivery is a duplicate and
//! counts nothing; anything that fails stores nothing.

use std::sync::Arc;

use crate::plugin::InboundRequest;
use crate::plugins::PluginRegistry;
use crate::record::{self, MAX_ID_LEN};
use crate::runtime::CallError;
use crate::store::{Delivery, GroupCommitter, StoreError};

/// Headers never stored with a raw payload: credentials are not usage.
const UNSTORED_HEADERS: [&str; 3] = ["authorization", "cookie", "proxy-authorization"];

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Receipt {
    pub event_id: String,
    pub records: usize,
    pub duplicate: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("no plugin named {0:?} is loaded")]
    UnknownPlugin(String),
    #[error("plugin {0:?} does not accept webhooks (it polls)")]
    NotPush(String),
    #[error("{error}")]
    Plugin { plugin: String, error: CallError },
    #[error("plugin {plugin} produced an invalid answer: {problem}")]
    InvalidOutput { plugin: String, problem: String },
    #[error("{0}")]
    Store(#[from] StoreError),
}

pub struct Ingest {
    plugins: Arc<PluginRegistry>,
    committer: GroupCommitter,
}

impl Ingest {
    pub fn new(plugins: Arc<PluginRegistry>, committer: GroupCommitter) -> Self {
        Self { plugins, committer }
    }

    pub async fn webhook(&self, plugin_name: &str, request: InboundRequest) -> Result<Receipt, IngestError> {
        let plugin = self
            .plugins
            .get(plugin_name)
            .ok_or_else(|| IngestError::UnknownPlugin(plugin_name.to_owned()))?;
        if !plugin.info().push {
            return Err(IngestError::NotPush(plugin_name.to_owned()));
        }
        let received_at_ms = crate::clock::now_ms();
        let request = Arc::new(request);
        let outcome = plugin
            .handle_webhook(request.clone())
            .await
            .map_err(|error| IngestError::Plugin { plugin: plugin_name.to_owned(), error })?;
        let invalid =
            |problem: String| IngestError::InvalidOutput { plugin: plugin_name.to_owned(), problem };
        if outcome.event_id.trim().is_empty() || outcome.event_id.len() > MAX_ID_LEN {
            return Err(invalid(format!("event-id must be 1-{MAX_ID_LEN} bytes")));
        }
        let records = record::validate_all(outcome.records).map_err(|e| invalid(e.to_string()))?;
        let count = records.len();
        // The call has returned, so this is the only reference: no copy.
        let request = Arc::try_unwrap(request).unwrap_or_else(|shared| (*shared).clone());
        let headers = request
            .headers
            .into_iter()
            .filter(|(name, _)| !UNSTORED_HEADERS.contains(&name.as_str()))
            .collect();
        let delivery = Delivery {
            plugin: plugin_name.to_owned(),
            event_id: outcome.event_id.clone(),
            received_at_ms,
            headers,
            body: request.body,
            records,
        };
        let committed = self.committer.commit(delivery).await?;
        Ok(Receipt { event_id: outcome.event_id, records: count, duplicate: committed.duplicate })
    }
}
