//! Push ingestion, apart from HTTP: a webhook goes to its plugin, the
//! records it yields are validated, and the delivery is committed (group
//! commit) before the caller gets a receipt. A redelivery is a duplicate and
//! counts nothing; anything that fails stores nothing.

use std::sync::Arc;

use crate::metrics;
use crate::plugin::{AdapterError, InboundRequest};
use crate::record;
use crate::registry::PluginRegistry;
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

impl IngestError {
    /// The `outcome` label of `meterd_ingest_requests_total`: what the
    /// answer's status says, in the terms an operator alerts on (4xx are
    /// the sender's, 5xx the plugin's or the store's).
    fn outcome(&self) -> &'static str {
        match self {
            IngestError::UnknownPlugin(_) | IngestError::NotPush(_) => "not_found",
            IngestError::Store(_) => "unavailable",
            IngestError::InvalidOutput { .. } => "plugin_error",
            IngestError::Plugin { error, .. } => match error {
                CallError::Adapter(AdapterError::Unauthorized(_)) => "unauthorized",
                CallError::Adapter(AdapterError::Malformed(_) | AdapterError::Unsupported(_)) => {
                    "bad_request"
                }
                CallError::Quarantined { .. } => "quarantined",
                _ => "plugin_error",
            },
        }
    }
}

pub struct Ingest {
    plugins: Arc<PluginRegistry>,
    committer: GroupCommitter,
}

impl Ingest {
    pub fn new(plugins: Arc<PluginRegistry>, committer: GroupCommitter) -> Self {
        Self { plugins, committer }
    }

    /// Handles one webhook and counts its outcome.
    pub async fn webhook(&self, plugin_name: &str, request: InboundRequest) -> Result<Receipt, IngestError> {
        let result = self.deliver(plugin_name, request).await;
        let (plugin, outcome) = match &result {
            Ok(receipt) => (plugin_name, if receipt.duplicate { "duplicate" } else { "accepted" }),
            Err(e @ IngestError::UnknownPlugin(_)) => (metrics::UNKNOWN_PLUGIN, e.outcome()),
            Err(e) => (plugin_name, e.outcome()),
        };
        metrics::INGEST_REQUESTS.inc([plugin, outcome]);
        result
    }

    async fn deliver(&self, plugin_name: &str, request: InboundRequest) -> Result<Receipt, IngestError> {
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
        let (event_id, records) = record::validate_webhook(outcome)
            .map_err(|problem| IngestError::InvalidOutput { plugin: plugin_name.to_owned(), problem })?;
        let count = records.len();
        // The call has returned, so this is the only reference: no copy.
        let request = Arc::try_unwrap(request).unwrap_or_else(|shared| (*shared).clone());
        let (path, query) = (request.path, request.query);
        let headers = request
            .headers
            .into_iter()
            .filter(|(name, _)| !UNSTORED_HEADERS.contains(&name.as_str()))
            .collect();
        let delivery = Delivery {
            plugin: plugin_name.to_owned(),
            event_id: event_id.clone(),
            received_at_ms,
            path,
            query,
            headers,
            body: request.body,
            records,
        };
        let committed = self.committer.commit(delivery).await?;
        Ok(Receipt { event_id, records: count, duplicate: committed.duplicate })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_follow_the_answer_status() {
        let plugin = |error: CallError| IngestError::Plugin { plugin: "p".to_owned(), error };
        let adapter = |error: AdapterError| plugin(CallError::Adapter(error));
        let cases = [
            (IngestError::UnknownPlugin("x".to_owned()), "not_found"),
            (IngestError::NotPush("p".to_owned()), "not_found"),
            (IngestError::Store(StoreError::Unavailable("down".to_owned())), "unavailable"),
            (IngestError::InvalidOutput { plugin: "p".to_owned(), problem: "?".to_owned() }, "plugin_error"),
            (adapter(AdapterError::Unauthorized("sig".to_owned())), "unauthorized"),
            (adapter(AdapterError::Malformed("json".to_owned())), "bad_request"),
            (adapter(AdapterError::Unsupported("path".to_owned())), "bad_request"),
            (adapter(AdapterError::Upstream("502".to_owned())), "plugin_error"),
            (adapter(AdapterError::Internal("bug".to_owned())), "plugin_error"),
            (plugin(CallError::Timeout { plugin: "p".to_owned(), deadline_ms: 100 }), "plugin_error"),
        ];
        for (error, outcome) in cases {
            assert_eq!(error.outcome(), outcome, "{error:?}");
        }
    }
}
