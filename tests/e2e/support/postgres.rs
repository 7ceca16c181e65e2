//! A fresh PostgreSQL database per test on the server the store tests use
//! (`METERD_TEST_POSTGRES`, default `postgres://postgres@127.0.0.1:5432/postgres`),
//! dropped when the test ends.

use sqlx::Connection as _;

const POSTGRES_ENV: &str = "METERD_TEST_POSTGRES";
const POSTGRES_DEFAULT: &str = "postgres://postgres@127.0.0.1:5432/postgres";

pub struct TestDatabase {
    /// The database's URL, for `database = …` in a gateway's config.
    pub url: String,
    admin_url: String,
    name: String,
}

impl TestDatabase {
    pub async fn create() -> Self {
        let admin_url = std::env::var(POSTGRES_ENV).unwrap_or_else(|_| POSTGRES_DEFAULT.to_owned());
        let mut admin = sqlx::PgConnection::connect(&admin_url).await.unwrap_or_else(|e| {
            panic!(
                "PostgreSQL is not reachable at {admin_url} ({e}). Start it (`bash tests/postgres/ensure.sh`) \
                 or point {POSTGRES_ENV} at a server where this user may create databases."
            )
        });
        let name = format!("meterd_e2e_{}_{}", std::process::id(), chrono::Utc::now().timestamp_micros());
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut admin).await.expect("CREATE DATABASE");
        let mut url = reqwest::Url::parse(&admin_url).expect("admin URL");
        url.set_path(&name);
        Self { url: url.to_string(), admin_url, name }
    }

    /// A connection to the test database, to read what the gateways stored.
    pub async fn connect(&self) -> sqlx::PgConnection {
        sqlx::PgConnection::connect(&self.url).await.expect("connecting to the test database")
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        // Drop may run inside the test's runtime: use a thread of our own.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            runtime.block_on(async {
                let mut admin = sqlx::PgConnection::connect(&admin_url).await.ok()?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut admin)
                    .await
                    .ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(_))) {
            eprintln!("could not drop the test database {}", self.name);
        }
    }
}
