//! What a statement written once for both engines (`store::shared`, the
//! rollup reads of `store::rollup`) needs of an engine: how it binds a
//! value and runs a statement (the same text for both, [`runs!`]), and the
//! little each says for itself: how an exact decimal is written (NUMERIC
//! on PostgreSQL, canonical text on SQLite: the counterpart of
//! [`StoredRow::decimal`]) and how an attribute of a record is read.
//! Parameters are `$N` on both engines.

use std::future::Future;
use std::ops::DerefMut;

use async_trait::async_trait;
use rust_decimal::Decimal;
use sqlx::pool::PoolConnection;
use sqlx::query::Query;
use sqlx::{Database, Encode, Postgres, Sqlite, Type};

use super::StoreError;
use super::rows::StoredRow;

/// A value both engines bind the same way.
pub(super) trait Param<'q>:
    Encode<'q, Postgres> + Type<Postgres> + Encode<'q, Sqlite> + Type<Sqlite> + Send + 'q
{
}

impl<'q, T> Param<'q> for T where
    T: Encode<'q, Postgres> + Type<Postgres> + Encode<'q, Sqlite> + Type<Sqlite> + Send + 'q
{
}

/// A statement with its arguments, of engine `DB`.
pub(super) type Statement<'q, DB> = Query<'q, DB, <DB as Database>::Arguments<'q>>;

/// An engine, as the statements written once see it.
pub(super) trait Engine: Database<Row: StoredRow> {
    /// Binds an exact decimal as the engine stores it.
    fn bind_decimal<'q>(query: Statement<'q, Self>, value: Decimal) -> Statement<'q, Self>;

    /// The text value of a record's attribute, the key (as
    /// [`Engine::attribute_key`] gives it) bound as `param`.
    fn attribute(param: &str) -> String;

    /// The key of an attribute, as [`Engine::attribute`] reads it (`None`:
    /// no attribute, a NULL value).
    fn attribute_key(key: Option<&str>) -> Option<String>;

    fn bind<'q, T: Param<'q>>(query: Statement<'q, Self>, value: T) -> Statement<'q, Self>;

    fn fetch_all<'q, 'c>(
        query: Statement<'q, Self>,
        conn: &'c mut Self::Connection,
    ) -> impl Future<Output = Result<Vec<Self::Row>, sqlx::Error>> + Send;

    fn fetch_optional<'q, 'c>(
        query: Statement<'q, Self>,
        conn: &'c mut Self::Connection,
    ) -> impl Future<Output = Result<Option<Self::Row>, sqlx::Error>> + Send;

    /// Runs the statement; returns how many rows it changed.
    fn execute<'q, 'c>(
        query: Statement<'q, Self>,
        conn: &'c mut Self::Connection,
    ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send;
}

/// Implements [`Engine`] for an engine: binding and running are the same
/// text for both; `$dialect` is what the engine says for itself.
macro_rules! runs {
    ($db:ty { $($dialect:tt)* }) => {
        impl Engine for $db {
            $($dialect)*

            fn bind<'q, T: Param<'q>>(query: Statement<'q, Self>, value: T) -> Statement<'q, Self> {
                query.bind(value)
            }

            async fn fetch_all<'q, 'c>(
                query: Statement<'q, Self>,
                conn: &'c mut Self::Connection,
            ) -> Result<Vec<Self::Row>, sqlx::Error> {
                query.fetch_all(conn).await
            }

            async fn fetch_optional<'q, 'c>(
                query: Statement<'q, Self>,
                conn: &'c mut Self::Connection,
            ) -> Result<Option<Self::Row>, sqlx::Error> {
                query.fetch_optional(conn).await
            }

            async fn execute<'q, 'c>(
                query: Statement<'q, Self>,
                conn: &'c mut Self::Connection,
            ) -> Result<u64, sqlx::Error> {
                Ok(query.execute(conn).await?.rows_affected())
            }
        }
    };
}

runs!(Postgres {
    fn bind_decimal<'q>(query: Statement<'q, Self>, value: Decimal) -> Statement<'q, Self> {
        query.bind(value)
    }

    fn attribute(param: &str) -> String {
        format!("attributes ->> {param}")
    }

    fn attribute_key(key: Option<&str>) -> Option<String> {
        key.map(str::to_owned)
    }
});

runs!(Sqlite {
    fn bind_decimal<'q>(query: Statement<'q, Self>, value: Decimal) -> Statement<'q, Self> {
        query.bind(meterd_units::format_quantity(value))
    }

    fn attribute(param: &str) -> String {
        format!("json_extract(attributes, {param})")
    }

    /// `$."key"`: a JSON path naming one attribute (keys are validated to
    /// contain no quotes).
    fn attribute_key(key: Option<&str>) -> Option<String> {
        key.map(|key| format!("$.\"{key}\""))
    }
});

/// A statement being bound, of engine `DB`.
pub(super) struct Sql<'q, DB: Database>(Statement<'q, DB>);

/// The statement `text`, to bind and run on either engine.
pub(super) fn sql<DB: Engine>(text: &str) -> Sql<'_, DB> {
    Sql(sqlx::query(text))
}

impl<'q, DB: Engine> Sql<'q, DB> {
    pub(super) fn bind<T: Param<'q>>(self, value: T) -> Self {
        Sql(DB::bind(self.0, value))
    }

    pub(super) fn bind_decimal(self, value: Decimal) -> Self {
        Sql(DB::bind_decimal(self.0, value))
    }

    pub(super) async fn fetch_all(self, conn: &mut DB::Connection) -> Result<Vec<DB::Row>, StoreError> {
        Ok(DB::fetch_all(self.0, conn).await?)
    }

    pub(super) async fn fetch_optional(
        self,
        conn: &mut DB::Connection,
    ) -> Result<Option<DB::Row>, StoreError> {
        Ok(DB::fetch_optional(self.0, conn).await?)
    }

    pub(super) async fn fetch_one(self, conn: &mut DB::Connection) -> Result<DB::Row, StoreError> {
        self.fetch_optional(conn).await?.ok_or_else(|| StoreError::from(sqlx::Error::RowNotFound))
    }

    /// Runs the statement; returns how many rows it changed.
    pub(super) async fn execute(self, conn: &mut DB::Connection) -> Result<u64, StoreError> {
        Ok(DB::execute(self.0, conn).await?)
    }
}

/// Where a store's statements run, for the parts of the store traits
/// written once for both engines (`store::shared`).
#[async_trait]
pub(super) trait Connections: Send + Sync {
    type Engine: Engine;

    /// A connection to read on (SQLite: of the reader pool).
    async fn reader(&self) -> Result<PoolConnection<Self::Engine>, StoreError>;

    /// A connection to write on, held while this lives.
    type Writer: DerefMut<Target = <Self::Engine as Database>::Connection> + Send;

    /// A connection to write on outside a transaction (SQLite: the one
    /// writer).
    async fn writer(&self) -> Result<Self::Writer, StoreError>;
}
