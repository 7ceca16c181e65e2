//! `meterd keys create|list|revoke`.

use meterd::config::Config;

use super::KeysCommand;

pub(super) async fn manage(config: &Config, command: KeysCommand) -> anyhow::Result<()> {
    use meterd::keys::{self, Scope};
    let store = meterd::server::open_store(config).await?;
    let now = meterd::clock::now_ms();
    match command {
        KeysCommand::Create { admin, org, label } => {
            let scope = keys::scope(admin, org)?;
            let (token, key) = keys::create(store.as_ref(), scope, label, now).await?;
            println!("{token}");
            eprintln!("created key {} ({}); it is shown only this once", key.id, scope_text(&key.scope));
        }
        KeysCommand::List => {
            println!("{:<14} {:<8} {:<26} {:<26} {:<16} ORGS", "ID", "SCOPE", "CREATED", "REVOKED", "LABEL");
            for key in store.api_keys().await? {
                let (scope, orgs) = match &key.scope {
                    Scope::Admin => ("admin", "-".to_owned()),
                    Scope::Orgs(orgs) => ("orgs", orgs.iter().cloned().collect::<Vec<_>>().join(",")),
                };
                let revoked = key.revoked_at_ms.map(meterd::http::rfc3339).unwrap_or_else(|| "-".to_owned());
                println!(
                    "{:<14} {scope:<8} {:<26} {revoked:<26} {:<16} {orgs}",
                    key.id,
                    meterd::http::rfc3339(key.created_at_ms),
                    key.label.as_deref().unwrap_or("-"),
                );
            }
        }
        KeysCommand::Revoke { id } => {
            if !store.revoke_api_key(&id, now).await? {
                anyhow::bail!("no active key {id:?} (see `meterd keys list`)");
            }
            println!("revoked {id}");
        }
    }
    Ok(())
}

fn scope_text(scope: &meterd::keys::Scope) -> String {
    match scope {
        meterd::keys::Scope::Admin => "admin".to_owned(),
        meterd::keys::Scope::Orgs(orgs) => {
            format!("orgs: {}", orgs.iter().cloned().collect::<Vec<_>>().join(", "))
        }
    }
}
