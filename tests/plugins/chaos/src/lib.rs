//! A test-only adapter that misbehaves on request, so end-to-end tests can
//! prove the sandbox holds: the body `loop` spins forever, `alloc` allocates
//! without bound, `trap` panics; any other body `ok:<event-id>` gives one
//! `chaos_units` delta of 1 for org `chaos-org`.

use meterd_plugin_sdk::{
    AdapterError, AdapterInfo, Capabilities, Guest, HttpRequest, PollOutcome, UsageKind, UsageRecord,
    WebhookOutcome,
};

/// What a request body asks the adapter to do.
#[derive(Debug, PartialEq, Eq)]
pub enum Behaviour<'a> {
    Loop,
    Alloc,
    Trap,
    Ok(&'a str),
}

pub fn behaviour(body: &[u8]) -> Result<Behaviour<'_>, AdapterError> {
    match std::str::from_utf8(body).map(str::trim) {
        Ok("loop") => Ok(Behaviour::Loop),
        Ok("alloc") => Ok(Behaviour::Alloc),
        Ok("trap") => Ok(Behaviour::Trap),
        Ok(text) => match text.strip_prefix("ok:") {
            Some(id) if !id.is_empty() => Ok(Behaviour::Ok(id)),
            _ => Err(AdapterError::Malformed(format!("unknown chaos command {text:?}"))),
        },
        Err(_) => Err(AdapterError::Malformed("body is not UTF-8".to_owned())),
    }
}

#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
fn good_record(event_id: &str) -> WebhookOutcome {
    WebhookOutcome {
        event_id: event_id.to_owned(),
        records: vec![UsageRecord {
            event_id: event_id.to_owned(),
            org_id: "chaos-org".to_owned(),
            subject: "chaos".to_owned(),
            metric: "chaos_units".to_owned(),
            kind: UsageKind::Delta,
            quantity: "1".to_owned(),
            at: 1_754_513_976_000,
            window_start: None,
            attributes: Vec::new(),
        }],
    }
}

#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
struct Chaos;

impl Guest for Chaos {
    fn info() -> AdapterInfo {
        AdapterInfo {
            name: "chaos".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            capabilities: Capabilities::PUSH,
            description: "test-only: loops, allocates or traps on request".to_owned(),
        }
    }

    fn handle_webhook(req: HttpRequest) -> Result<WebhookOutcome, AdapterError> {
        match behaviour(&req.body)? {
            Behaviour::Loop => {
                let mut n = 0u64;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            Behaviour::Alloc => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(std::hint::black_box(vec![1u8; 1 << 20]));
                }
            }
            Behaviour::Trap => panic!("chaos: trap requested"),
            Behaviour::Ok(id) => Ok(good_record(id)),
        }
    }

    fn targets() -> Result<Vec<String>, AdapterError> {
        Ok(Vec::new())
    }

    fn poll(_target: String, _cursor: Option<String>) -> Result<PollOutcome, AdapterError> {
        Err(AdapterError::Unsupported("chaos does not poll".to_owned()))
    }
}

#[cfg(target_arch = "wasm32")]
meterd_plugin_sdk::export_adapter!(Chaos with_types_in meterd_plugin_sdk);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_commands() {
        assert_eq!(behaviour(b"loop"), Ok(Behaviour::Loop));
        assert_eq!(behaviour(b"alloc\n"), Ok(Behaviour::Alloc));
        assert_eq!(behaviour(b"trap"), Ok(Behaviour::Trap));
        assert_eq!(behaviour(b"ok:e-1"), Ok(Behaviour::Ok("e-1")));
        assert!(behaviour(b"ok:").is_err());
        assert!(behaviour(&[0xff]).is_err());
        assert_eq!(good_record("e-1").records[0].event_id, "e-1");
    }
}
