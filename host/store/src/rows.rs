//! Stored rows read into values once for both engines. A column both
//! engines decode alike (text, integers, blobs, booleans) is read with
//! [`StoredRow::column`]; an exact decimal is NUMERIC on PostgreSQL and
//! text on SQLite, so [`StoredRow::decimal`] is the one thing each engine
//! says for itself.

use rust_decimal::Decimal;
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;
use sqlx::{Decode, Postgres, Row as _, Sqlite, Type};

use super::rollup::{LevelRow, RebuildRow, SubjectKey, attributes_of};
use super::{
    OrgPlan, OutboxCounts, OutboxMessage, Payload, PollState, StoreError, StoredDelivery, StoredRecord,
    key_from_columns, payload_from_columns,
};
use crate::ApiKey;
use crate::meter::rollup::groups::GroupHour;
use crate::meter::rollup::{Hour, Month, SeriesKey};
use crate::meter::{Kind, Point};
use crate::plans::credits::Grant;
use crate::plans::standing::Run;
use crate::record::UsageRecord;

/// A column type both engines decode the same way.
pub(super) trait Column:
    for<'r> Decode<'r, Postgres> + Type<Postgres> + for<'r> Decode<'r, Sqlite> + Type<Sqlite>
{
}

impl<T> Column for T where
    T: for<'r> Decode<'r, Postgres> + Type<Postgres> + for<'r> Decode<'r, Sqlite> + Type<Sqlite>
{
}

/// A row of either engine.
pub(super) trait StoredRow {
    fn column<T: Column>(&self, name: &str) -> Result<T, StoreError>;
    fn decimal_opt(&self, name: &str) -> Result<Option<Decimal>, StoreError>;

    fn decimal(&self, name: &str) -> Result<Decimal, StoreError> {
        self.decimal_opt(name)?.ok_or_else(|| StoreError::Corrupt(format!("stored {name} is null")))
    }
}

impl StoredRow for PgRow {
    fn column<T: Column>(&self, name: &str) -> Result<T, StoreError> {
        Ok(self.try_get(name)?)
    }

    fn decimal_opt(&self, name: &str) -> Result<Option<Decimal>, StoreError> {
        Ok(self.try_get(name)?)
    }
}

impl StoredRow for SqliteRow {
    fn column<T: Column>(&self, name: &str) -> Result<T, StoreError> {
        Ok(self.try_get(name)?)
    }

    fn decimal_opt(&self, name: &str) -> Result<Option<Decimal>, StoreError> {
        let text: Option<String> = self.try_get(name)?;
        text.map(|t| {
            meterd_units::parse_quantity(&t).map_err(|e| StoreError::Corrupt(format!("stored {name}: {e}")))
        })
        .transpose()
    }
}

fn kind(row: &impl StoredRow) -> Result<Kind, StoreError> {
    let kind: String = row.column("kind")?;
    Kind::parse(&kind).ok_or_else(|| StoreError::Corrupt(format!("record kind {kind:?}")))
}

/// A delivery's payload; `what` names the delivery in an error.
pub(super) fn payload(row: &impl StoredRow, what: &str) -> Result<Payload, StoreError> {
    let headers: String = row.column("headers")?;
    payload_from_columns(
        row.column("payload_purged_at_ms")?,
        row.column("path")?,
        row.column("query")?,
        &headers,
        row.column("body")?,
        what,
    )
}

/// A stored delivery of `plugin` to replay.
pub(super) fn delivery(row: &impl StoredRow, plugin: &str) -> Result<StoredDelivery, StoreError> {
    let event_id: String = row.column("event_id")?;
    Ok(StoredDelivery {
        id: row.column("id")?,
        payload: payload(row, &format!("{plugin}/{event_id}"))?,
        received_at_ms: row.column("received_at_ms")?,
        event_id,
    })
}

/// A usage record as stored (`attributes` as JSON text).
pub(super) fn stored_record(row: &impl StoredRow) -> Result<StoredRecord, StoreError> {
    let attributes: String = row.column("attributes")?;
    Ok(StoredRecord {
        id: row.column("id")?,
        delivery_id: row.column("delivery_id")?,
        seq: row.column("seq")?,
        record: UsageRecord {
            event_id: row.column("event_id")?,
            org_id: row.column("org_id")?,
            subject: row.column("subject")?,
            metric: row.column("metric")?,
            kind: kind(row)?,
            quantity: row.decimal("quantity")?,
            at_ms: row.column("at_ms")?,
            window_start_ms: row.column("window_start_ms")?,
            attributes: serde_json::from_str(&attributes)
                .map_err(|e| StoreError::Corrupt(format!("stored attributes: {e}")))?,
        },
    })
}

/// A record as the engine reads it (`grp`: the grouping attribute's value).
pub(super) fn point(row: &impl StoredRow) -> Result<Point, StoreError> {
    Ok(Point {
        kind: kind(row)?,
        subject: row.column("subject")?,
        quantity: row.decimal("quantity")?,
        at_ms: row.column("at_ms")?,
        group: row.column("grp")?,
    })
}

pub(super) fn grant(row: &impl StoredRow) -> Result<Grant, StoreError> {
    Ok(Grant {
        id: Some(row.column("id")?),
        amount: row.decimal("amount")?,
        effective_at_ms: row.column("effective_at_ms")?,
        expires_at_ms: row.column("expires_at_ms")?,
        priority: row.column("priority")?,
        created_at_ms: row.column("created_at_ms")?,
        source: row.column("source")?,
    })
}

pub(super) fn poll_state(row: &impl StoredRow) -> Result<PollState, StoreError> {
    Ok(PollState {
        plugin: row.column("plugin")?,
        target: row.column("target")?,
        cursor: row.column("cursor")?,
        lease_holder: row.column("lease_holder")?,
        lease_expires_ms: row.column("lease_expires_ms")?,
        last_success_ms: row.column("last_success_ms")?,
        last_error: row.column("last_error")?,
        last_error_ms: row.column("last_error_ms")?,
        consecutive_failures: row.column("consecutive_failures")?,
        next_run_ms: row.column("next_run_ms")?,
    })
}

pub(super) fn org_plan(row: &impl StoredRow) -> Result<OrgPlan, StoreError> {
    Ok(OrgPlan {
        org_id: row.column("org_id")?,
        plan: row.column("plan")?,
        assigned_at_ms: row.column("assigned_at_ms")?,
    })
}

pub(super) fn outbox_message(row: &impl StoredRow) -> Result<OutboxMessage, StoreError> {
    Ok(OutboxMessage {
        id: row.column("id")?,
        message_id: row.column("message_id")?,
        endpoint: row.column("endpoint")?,
        event_type: row.column("event_type")?,
        payload: row.column("payload")?,
        created_at_ms: row.column("created_at_ms")?,
        attempts: row.column("attempts")?,
    })
}

pub(super) fn outbox_counts(row: &impl StoredRow) -> Result<OutboxCounts, StoreError> {
    Ok(OutboxCounts {
        pending: row.column("pending")?,
        delivered: row.column("delivered")?,
        gave_up: row.column("gave_up")?,
    })
}

/// An API key (`orgs` as a JSON array).
pub(super) fn api_key(row: &impl StoredRow) -> Result<ApiKey, StoreError> {
    let orgs: String = row.column("orgs")?;
    key_from_columns(
        row.column("id")?,
        row.column("secret_hash")?,
        row.column("admin")?,
        &orgs,
        row.column("label")?,
        row.column("created_at_ms")?,
        row.column("revoked_at_ms")?,
    )
}

pub(super) fn hour(row: &impl StoredRow) -> Result<Hour, StoreError> {
    Ok(Hour {
        delta_sum: row.decimal("delta_sum")?,
        records: row.column("records")?,
        level_step: row.decimal("level_step")?,
        level_moment: row.decimal("level_moment")?,
        level_open: row.decimal("level_open")?,
        level_peak: row.decimal_opt("level_peak")?,
        level_last_at: row.column("level_last_at_ms")?,
    })
}

pub(super) fn group_hour(row: &impl StoredRow) -> Result<GroupHour, StoreError> {
    Ok(GroupHour {
        delta_sum: row.decimal("delta_sum")?,
        records: row.column("records")?,
        deltas: row.column("deltas")?,
    })
}

pub(super) fn month(row: &impl StoredRow) -> Result<Month, StoreError> {
    Ok(Month {
        delta_sum: row.decimal("delta_sum")?,
        records: row.column("records")?,
        level_step: row.decimal("level_step")?,
        level_moment: row.decimal("level_moment")?,
    })
}

pub(super) fn series(row: &impl StoredRow) -> Result<SeriesKey, StoreError> {
    Ok(SeriesKey { org_id: row.column("org_id")?, metric: row.column("metric")? })
}

/// A series and the time in column `time`: a rollup row's key.
pub(super) fn series_at(row: &impl StoredRow, time: &str) -> Result<(SeriesKey, i64), StoreError> {
    Ok((series(row)?, row.column(time)?))
}

/// A sandbox run of an org.
pub(super) fn run(row: &impl StoredRow) -> Result<(String, Run), StoreError> {
    Ok((
        row.column("org_id")?,
        Run {
            subject: row.column("subject")?,
            started_ms: row.column("started_ms")?,
            ended_ms: row.column("ended_ms")?,
        },
    ))
}

/// Level records of a subject at an instant, grouped (`n`: how many).
pub(super) fn level_row(row: &impl StoredRow) -> Result<LevelRow, StoreError> {
    Ok(LevelRow {
        count: row.column("n")?,
        org_id: row.column("org_id")?,
        metric: row.column("metric")?,
        subject: row.column("subject")?,
        at_ms: row.column("at_ms")?,
        quantity: row.decimal("quantity")?,
        attributes: row.column("attributes")?,
    })
}

/// A subject's level at an instant: (subject, instant, quantity).
pub(super) fn subject_level(row: &impl StoredRow) -> Result<(SubjectKey, i64, Decimal), StoreError> {
    Ok(((series(row)?, row.column("subject")?), row.column("at_ms")?, row.decimal("quantity")?))
}

/// A record as a rebuild folds it (`attributes` as JSON text).
pub(super) fn rebuild_row(row: &impl StoredRow) -> Result<RebuildRow, StoreError> {
    let attributes: String = row.column("attributes")?;
    Ok(RebuildRow {
        org_id: row.column("org_id")?,
        metric: row.column("metric")?,
        subject: row.column("subject")?,
        kind: row.column("kind")?,
        quantity: row.decimal("quantity")?,
        at_ms: row.column("at_ms")?,
        attributes: attributes_of(&attributes)?,
    })
}
