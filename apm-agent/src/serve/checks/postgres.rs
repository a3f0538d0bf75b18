//! `postgres://user[:password]@host[:port][/db]`: `SELECT 1` through
//! tokio-postgres, as the application's own health route would run it.
//!
//! The password may instead come from a file (`?password_file=/path`, read
//! at every check so a rotated secret is picked up) or an environment
//! variable (`?password_env=NAME`); the query string is never shown.

use std::time::Duration;

use percent_encoding::percent_decode_str;

/// Where the password comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Password {
    None,
    /// In the URL itself.
    Inline,
    File(String),
    Env(String),
}

fn decoded(s: &str) -> String {
    percent_decode_str(s).decode_utf8_lossy().into_owned()
}

/// The connection settings of `url`, checked at startup (without reading
/// the password: a missing secret fails the check, not the agent) so that
/// a typo stops the agent with a clear message rather than failing every
/// check.
pub(super) fn validate(url: &str) -> Result<(), String> {
    settings(url, false).map(|_| ())
}

/// The connection settings of `url`, its password read from wherever it is.
pub(super) fn config(url: &str) -> Result<tokio_postgres::Config, String> {
    settings(url, true)
}

fn settings(url: &str, read_password: bool) -> Result<tokio_postgres::Config, String> {
    let u = url::Url::parse(url).map_err(|e| format!("invalid postgres URL: {e}"))?;
    let host = u
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or("a postgres check needs a host: postgres://user@host:5432/db")?;
    let user = decoded(u.username());
    if user.is_empty() {
        return Err("a postgres check needs a user: postgres://user@host:5432/db".into());
    }
    let mut password = if u.password().is_some() {
        Password::Inline
    } else {
        Password::None
    };
    for (key, value) in u.query_pairs() {
        password = match (&*key, password) {
            ("password_file", Password::None) => Password::File(value.into_owned()),
            ("password_env", Password::None) => Password::Env(value.into_owned()),
            ("password_file" | "password_env", _) => {
                return Err(
                    "give the postgres password once: in the URL, password_file or password_env"
                        .into(),
                );
            }
            (other, _) => {
                return Err(format!(
                    "unknown postgres check option {other:?} (known: password_file, password_env)"
                ));
            }
        };
    }
    let mut c = tokio_postgres::Config::new();
    c.host(host.trim_start_matches('[').trim_end_matches(']'))
        .port(u.port().unwrap_or(5432))
        .user(&user)
        .application_name("apm-agent");
    let db = decoded(u.path().trim_start_matches('/'));
    if !db.is_empty() {
        c.dbname(&db);
    }
    match password {
        _ if !read_password => {}
        Password::None => {}
        Password::Inline => {
            c.password(decoded(u.password().unwrap_or_default()));
        }
        Password::File(path) => {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("reading the postgres password file {path}: {e}"))?;
            c.password(text.trim_end_matches(['\n', '\r']));
        }
        Password::Env(name) => {
            let value = std::env::var(&name)
                .map_err(|_| format!("the postgres password variable {name} is not set"))?;
            c.password(value);
        }
    }
    Ok(c)
}

/// Connects and runs `SELECT 1`; the detail on success, the server's or
/// the connection's error otherwise.
pub(super) async fn select_one(url: &str, timeout: Duration) -> Result<String, String> {
    let mut c = config(url)?;
    c.connect_timeout(timeout);
    let (client, connection) = c
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| format!("connect: {}", describe(&e)))?;
    let driver = tokio::spawn(connection);
    let result = client
        .simple_query("SELECT 1")
        .await
        .map(|_| "SELECT 1".to_owned())
        .map_err(|e| format!("SELECT 1: {}", describe(&e)));
    drop(client);
    driver.abort();
    result
}

/// The server's message when there is one (tokio-postgres prints only
/// "db error"), else the error and its cause.
fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{}: {}", db.severity(), db.message());
    }
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_the_password_from_anywhere_once() {
        let c = config("postgres://app:s%40cret@db.internal:6543/shop").expect("inline");
        assert_eq!(c.get_user(), Some("app"));
        assert_eq!(c.get_password(), Some(&b"s@cret"[..]));
        assert_eq!(c.get_dbname(), Some("shop"));
        assert_eq!(c.get_ports(), &[6543]);
        let path = std::env::temp_dir().join(format!("apm-pg-pw-{}", std::process::id()));
        std::fs::write(&path, "fromfile\n").expect("write");
        let c = config(&format!(
            "postgres://app@[::1]/db?password_file={}",
            path.display()
        ))
        .expect("file");
        assert_eq!(c.get_password(), Some(&b"fromfile"[..]));
        std::fs::remove_file(&path).ok();
        assert!(config("postgres://app@h/db?password_env=APM_TEST_UNSET_PW_VAR").is_err());
        // Validated without reading the secret: it may appear later.
        assert!(validate("postgres://app@h/db?password_file=/nonexistent/pw").is_ok());
        assert!(
            config("postgres://h:5432/db")
                .expect_err("no user")
                .contains("user")
        );
        assert!(
            config("postgres://app@h/db?sslmode=require")
                .expect_err("option")
                .contains("sslmode")
        );
        assert!(config("postgres://app:x@h/db?password_file=/p").is_err());
    }
}
