//! What every end-to-end test needs: freshly built plugin components, a real
//! `meterd` process on an ephemeral loopback port with its own SQLite file
//! (the test kit's `Gateway`, answers read as `meterd::api` types), an HTTP
//! client, and E2B-style signing.

#![allow(dead_code, unused_imports)] // each test binary uses a different part

pub mod daytona;
pub mod postgres;
pub mod s3;

use std::process::Command;
use std::time::{Duration, Instant};

use meterd::api::Quantity;
use meterd::api::ops::{Plugins, Poll};
use meterd::api::usage::Usage;

pub use meterd_testkit::{E2B_SECRET, component, e2b_signature, fixture};

pub use meterd_testkit::gateway::{Body, Options};

pub const ADMIN_TOKEN: &str = "e2e-admin-token-0123456789";

pub fn meterd_binary() -> &'static str {
    env!("CARGO_BIN_EXE_meterd")
}

/// The `meterd` command with every `METERD_*` variable of the caller's
/// environment removed: a test's config file is the whole truth.
pub fn meterd_command() -> Command {
    meterd_testkit::gateway::command(meterd_binary())
}

/// The kit's [`meterd_testkit::gateway::Gateway`] running this test
/// target's `meterd`, with the readings several areas share, typed by
/// `meterd::api`. Everything else (stop, restart, `get`, …) is the kit's,
/// through `Deref`.
pub struct Gateway(meterd_testkit::gateway::Gateway);

impl std::ops::Deref for Gateway {
    type Target = meterd_testkit::gateway::Gateway;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Gateway {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Gateway {
    pub fn start(options: Options) -> Self {
        Self(meterd_testkit::gateway::Gateway::start(meterd_binary(), options))
    }

    /// The `total` of a usage query over August 2025 (where the test events live).
    pub async fn total(&self, org: &str, meter: &str) -> String {
        let (status, body) = self
            .get(&format!(
                "/v1/orgs/{org}/usage?meter={meter}&from=2025-08-01T00:00:00Z&to=2025-09-01T00:00:00Z"
            ))
            .await;
        assert_eq!(status, 200, "usage query failed: {body}");
        body.json::<Usage>().total.to_string()
    }

    /// The poll state of one plugin's target, from `GET /v1/plugins`.
    pub async fn poll_state(&self, plugin: &str, target: &str) -> Option<Poll> {
        let (status, body) = self.get("/v1/plugins").await;
        assert_eq!(status, 200, "{body}");
        let plugins: Plugins = body.json();
        let p = plugins.plugins.into_iter().find(|p| p.name == plugin)?;
        p.polls.into_iter().find(|s| s.target == target)
    }

    /// Waits (up to 90 s) until `check` holds for a target's poll state; returns it.
    pub async fn wait_for_poll_state(
        &self,
        plugin: &str,
        target: &str,
        what: &str,
        check: impl Fn(&Poll) -> bool,
    ) -> Poll {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Some(state) = self.poll_state(plugin, target).await
                && check(&state)
            {
                return state;
            }
            assert!(Instant::now() < deadline, "poll state of {plugin} {target} never showed {what}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// A quantity as answers show it, to compare with one read from an answer.
pub fn quantity(text: &str) -> Quantity {
    Quantity(text.to_owned())
}

/// An E2B v2 lifecycle event body.
pub fn e2b_event(
    id: &str,
    event_type: &str,
    timestamp: &str,
    sandbox: &str,
    org: &str,
    execution: Option<(u64, u64, u64)>,
) -> Vec<u8> {
    let mut event_data = serde_json::json!({ "sandbox_metadata": { "tenant": org } });
    if let Some((vcpu, memory_mb, ms)) = execution {
        event_data["execution"] = serde_json::json!({
            "started_at": "2025-08-06T00:00:00Z", "vcpu_count": vcpu, "memory_mb": memory_mb, "execution_time": ms,
        });
    }
    serde_json::json!({
        "id": id, "version": "v2", "type": format!("sandbox.lifecycle.{event_type}"), "timestamp": timestamp,
        "event_data": event_data, "sandbox_id": sandbox, "sandbox_template_id": "base",
        "sandbox_team_id": "team-1",
    })
    .to_string()
    .into_bytes()
}
