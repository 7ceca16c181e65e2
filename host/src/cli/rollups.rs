//! `meterd rollups check|rebuild`.

use meterd::config::Config;

use super::{Exit, RollupsCommand};

/// `rollups check` and `rollups rebuild`.
pub(super) async fn run(config: &Config, command: RollupsCommand) -> anyhow::Result<()> {
    let store = meterd::server::open_store(config).await?;
    match command {
        RollupsCommand::Rebuild => {
            let records = store.rebuild_rollups().await?;
            println!("rollups rebuilt from {records} records");
            Ok(())
        }
        RollupsCommand::Check { examples, json } => {
            let report = store.check_rollups(examples).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "{} records; stored rollups: {} hours, {} steps, {} months, {} group hours; {} rows differ",
                    report.records,
                    report.hours,
                    report.steps,
                    report.months,
                    report.group_hours,
                    report.differences
                );
                for example in &report.examples {
                    println!("  {example}");
                }
            }
            if report.differences > 0 {
                return Err(Exit {
                    code: 1,
                    message: format!(
                        "{} rollup rows differ from the raw records (`meterd rollups rebuild` recomputes them)",
                        report.differences
                    ),
                }
                .into());
            }
            Ok(())
        }
    }
}
