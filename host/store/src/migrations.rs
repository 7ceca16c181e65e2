//! The schema migrations of both engines, embedded in the binary.
//!
//! sqlx's `migrate!` macro would embed them too, but it needs sqlx's
//! `macros` feature, which compiles sqlx's drivers (and SQLite's C source) a
//! second time, for the macro, in every fresh build. Here the files are
//! listed by name and each is read with `include_str!`; the version,
//! description and checksum are derived from them exactly as sqlx's own
//! directory reader derives them, so databases migrated by either accept
//! the other (a unit test compares the two, and that no file is left out).

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;

use sqlx::error::BoxDynError;
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};

use super::StoreError;

/// One engine's migration files: (file stem, SQL), in version order.
#[derive(Debug, Clone, Copy)]
pub(super) struct Embedded(&'static [(&'static str, &'static str)]);

/// `embed!("0001_init", …)`: the files `migrations/sqlite/<stem>.sql` as
/// [`SQLITE`] and `migrations/postgres/<stem>.sql` as [`POSTGRES`]. Both
/// engines keep the same file names (each migration has a file in each
/// folder), so one list serves both; the unit test reads each folder.
macro_rules! embed {
    ($($stem:literal),+ $(,)?) => {
        pub(super) const SQLITE: Embedded = Embedded(&[$((
            $stem,
            include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../migrations/sqlite/", $stem, ".sql")),
        )),+]);
        pub(super) const POSTGRES: Embedded = Embedded(&[$((
            $stem,
            include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../migrations/postgres/", $stem, ".sql")),
        )),+]);
    };
}

embed!(
    "0001_init",
    "0002_polling_and_corrections",
    "0003_plans_credits_notifications",
    "0004_api_keys",
    "0005_payload_retention",
    "0006_delivery_path",
    "0007_replay",
    "0008_rollups",
    "0009_runs",
    "0010_month_summaries",
    "0011_level_index",
    "0012_group_hours",
    "0013_group_levels",
);

impl Embedded {
    /// The migrator of these files, with sqlx's defaults (locking, each
    /// migration in a transaction, no applied migration may be missing).
    pub(super) async fn migrator(self) -> Result<Migrator, StoreError> {
        Migrator::new(self).await.map_err(|e| StoreError::Migration(e.to_string()))
    }

    fn migrations(self) -> Result<Vec<Migration>, String> {
        self.0.iter().map(|&(stem, sql)| migration(stem, sql)).collect()
    }
}

/// As sqlx reads `<version>_<description>.sql`: the description with `_`
/// read as spaces, the checksum of the SQL text, no transaction if the
/// file says so on its first line.
fn migration(stem: &'static str, sql: &'static str) -> Result<Migration, String> {
    let (version, description) = stem
        .split_once('_')
        .ok_or_else(|| format!("migration {stem:?} is not named <version>_<description>"))?;
    let version =
        version.parse().map_err(|_| format!("migration {stem:?} does not start with a version number"))?;
    let no_tx = sql.starts_with("-- no-transaction");
    Ok(Migration::new(
        version,
        Cow::Owned(description.replace('_', " ")),
        MigrationType::Simple,
        Cow::Borrowed(sql),
        no_tx,
    ))
}

impl MigrationSource<'static> for Embedded {
    fn resolve(self) -> Pin<Box<dyn Future<Output = Result<Vec<Migration>, BoxDynError>> + Send>> {
        let migrations = self.migrations().map_err(BoxDynError::from);
        Box::pin(async move { migrations })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// What a database remembers of a migration, and what sqlx checks.
    fn identity(m: &Migration) -> (i64, String, String, Vec<u8>, bool) {
        (
            m.version,
            m.description.to_string(),
            format!("{:?}", m.migration_type),
            m.checksum.to_vec(),
            m.no_tx,
        )
    }

    /// Every file of the engine's folder is embedded, and each migration
    /// is the one sqlx's directory reader makes of the file: a database
    /// migrated before (by `migrate!`, which used that reader) sees the same
    /// versions and checksums.
    #[tokio::test]
    async fn the_embedded_migrations_are_the_folders_as_sqlx_reads_them() {
        for (engine, embedded) in [("sqlite", SQLITE), ("postgres", POSTGRES)] {
            let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../migrations").join(engine);
            let from_folder = Migrator::new(folder.as_path()).await.expect("reading the migrations folder");
            let embedded = embedded.migrator().await.expect("the embedded migrations");
            let read: Vec<_> = from_folder.iter().map(identity).collect();
            let ours: Vec<_> = embedded.iter().map(identity).collect();
            assert!(read.len() >= 13, "{engine}: {} migrations in the folder", read.len());
            assert_eq!(ours, read, "{engine}: embedded migrations differ from migrations/{engine}");
        }
    }

    #[test]
    fn a_misnamed_file_is_refused_with_its_name() {
        assert!(migration("init", "").unwrap_err().contains("\"init\" is not named"));
        assert!(migration("first_init", "").unwrap_err().contains("does not start with a version"));
        let m = migration("0042_add_a_thing", "-- no-transaction\nSELECT 1").expect("a well-named file");
        assert_eq!((m.version, m.description.as_ref(), m.no_tx), (42, "add a thing", true));
    }
}
