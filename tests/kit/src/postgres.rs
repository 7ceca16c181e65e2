//! A PostgreSQL database made for one test or benchmark run, dropped
//! (`WITH (FORCE)`) with the value.

use sqlx::Connection as _;

/// Where the test server is: `METERD_TEST_POSTGRES`, by default the
/// machine's server that `tests/postgres/ensure.sh` starts.
pub const ADMIN_URL_ENV: &str = "METERD_TEST_POSTGRES";
pub const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The admin URL from [`ADMIN_URL_ENV`] or the default.
pub fn admin_url() -> String {
    std::env::var(ADMIN_URL_ENV).unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_owned())
}

/// A unique database name: `prefix`, this process, the time and a count
/// (tests of one process create databases concurrently).
pub fn unique_name(prefix: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let micros =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros());
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{prefix}_{}_{micros}_{n}", std::process::id())
}

pub struct TestDatabase {
    /// The database's URL, for `database = …` in a gateway's config.
    pub url: String,
    pub admin_url: String,
    pub name: String,
}

impl TestDatabase {
    /// Creates `name` on the server at `admin_url`; panics with how to
    /// start the server when it is not reachable.
    pub async fn create(admin_url: &str, name: String) -> Self {
        let mut admin = sqlx::PgConnection::connect(admin_url).await.unwrap_or_else(|e| {
            panic!(
                "PostgreSQL is not reachable at {} ({e}). Start it (`bash tests/postgres/ensure.sh`) \
                 or point {ADMIN_URL_ENV} at a server where this user may create databases.",
                redacted(admin_url)
            )
        });
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
        let _ = admin.close().await;
        let mut url = url::Url::parse(admin_url).unwrap_or_else(|e| {
            panic!("the PostgreSQL admin URL is not a URL ({e}): {}", redacted(admin_url))
        });
        url.set_path(&name);
        Self { url: url.to_string(), admin_url: admin_url.to_owned(), name }
    }

    /// A new database named after `prefix` on the [`admin_url`] server.
    pub async fn fresh(prefix: &str) -> Self {
        Self::create(&admin_url(), unique_name(prefix)).await
    }

    /// A connection to the database, to read what was stored.
    pub async fn connect(&self) -> sqlx::PgConnection {
        sqlx::PgConnection::connect(&self.url).await.expect("connecting to the test database")
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        // A runtime of our own on a thread of our own: drop may run inside
        // the caller's runtime (or while it is busy, after a panic).
        let dropped = std::thread::spawn(move || -> Result<(), String> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(async {
                let mut admin = sqlx::PgConnection::connect(&admin_url).await.map_err(|e| e.to_string())?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut admin)
                    .await
                    .map_err(|e| e.to_string())?;
                let _ = admin.close().await;
                Ok(())
            })
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("could not drop the test database {}: {e}", self.name),
            Err(_) => {
                eprintln!("could not drop the test database {}: the dropping thread panicked", self.name)
            }
        }
    }
}

/// The URL without its password.
fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}
