//! `meterd usage`.

use meterd::config::Config;

use super::UsageArgs;

/// `usage`: the API's answers for one org, computed by the same
/// `UsageService` over the configured database. Arguments are checked
/// before the database is opened.
pub(super) async fn show(config: &Config, args: UsageArgs) -> anyhow::Result<()> {
    use meterd::usage::{self, UsageRequest, UsageService};
    if !meterd::orgs::valid_org_id(&args.org) {
        anyhow::bail!("--org {:?}: {}", args.org, meterd::orgs::OrgError::BadOrgId);
    }
    let now_ms = meterd::clock::now_ms();
    let range = usage::range(args.from.as_deref(), args.to.as_deref(), now_ms)?;
    let window = args.window.as_deref().map(usage::parse_window).transpose()?;
    let meters = match &args.meter {
        Some(meter) => vec![meter.clone()],
        None => config.meters.iter().map(|m| m.name.clone()).collect(),
    };
    let service = UsageService::new(meterd::server::open_store(config).await?, config.meters.clone());
    let mut answers = Vec::with_capacity(meters.len());
    for meter in meters {
        let request = UsageRequest { org_id: args.org.clone(), meter, range, window, group_by: None };
        let answer = service.usage(&request, now_ms).await?;
        answers.push((request, answer));
    }
    if args.json {
        let mut values: Vec<meterd::api::usage::Usage> =
            answers.iter().map(|(r, a)| meterd::api::usage::Usage::new(r, a)).collect();
        let shown = match (args.meter, values.pop()) {
            (Some(_), Some(one)) => serde_json::to_string_pretty(&one)?,
            (_, last) => {
                values.extend(last);
                serde_json::to_string_pretty(&values)?
            }
        };
        println!("{shown}");
    } else {
        print!("{}", usage_table(&answers, args.window.as_deref()));
    }
    Ok(())
}

/// One row per meter (its total over the range), followed with a window
/// size by one indented row per window; columns aligned to their widest cell.
fn usage_table(
    answers: &[(meterd::usage::UsageRequest, meterd::usage::UsageAnswer)],
    window: Option<&str>,
) -> String {
    use meterd::http::rfc3339;
    let quantity = meterd_units::format_quantity;
    let mut rows = vec![["METER", "UNIT", "FROM", "TO", "TOTAL"].map(str::to_owned)];
    for (request, answer) in answers {
        rows.push([
            answer.meter.name.clone(),
            answer.meter.unit.clone(),
            rfc3339(request.range.from_ms),
            rfc3339(request.range.to_ms),
            quantity(answer.total),
        ]);
        if let Some(size) = window {
            for w in &answer.windows {
                let label = format!("  {size}");
                rows.push([label, String::new(), rfc3339(w.start_ms), rfc3339(w.end_ms), quantity(w.value)]);
            }
        }
    }
    meterd::table::render(&rows)
}
