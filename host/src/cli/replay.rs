//! `meterd replay`.

use meterd::config::Config;

use super::{Exit, ReplayArgs};

/// `replay`: starts the job on the gateway, follows it, prints the report.
pub(super) async fn run(config: &Config, args: ReplayArgs) -> anyhow::Result<()> {
    use meterd::replay::client::{self, StderrProgress};
    let url = args.url.unwrap_or_else(|| {
        let mut listen = config.listen;
        if listen.ip().is_unspecified() {
            listen.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        format!("http://{listen}")
    });
    let request = client::ReplayArgs {
        url,
        token: args.token.or_else(|| config.admin_token.clone()),
        plugin: args.plugin,
        from: args.from,
        to: args.to,
        dry_run: args.dry_run,
    };
    let mut progress = StderrProgress::default();
    let job = client::run(&request, if args.json { None } else { Some(&mut progress) })
        .await
        .map_err(|e| Exit { code: 2, message: e.to_string() })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&job)?);
    } else {
        print!("{}", client::render(&job));
    }
    if job.state != meterd::api::replays::ReplayState::Done {
        let error = job.error.as_deref().unwrap_or("unknown error");
        return Err(Exit { code: 2, message: format!("the replay stopped: {error}") }.into());
    }
    let (failed, conflicts) = (job.report.deliveries.failed, job.report.records.conflicts);
    if failed + conflicts > 0 {
        return Err(Exit {
            code: 1,
            message: format!(
                "{failed} deliveries could not be replayed and {conflicts} records conflict (listed above)"
            ),
        }
        .into());
    }
    Ok(())
}
