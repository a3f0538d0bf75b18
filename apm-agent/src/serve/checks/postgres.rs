//! `postgres://user[:password]@host[:port][/db]`: `SELECT 1` through
//! tokio-postgres, as the application's own health route would run it.
//! The URL and its password sources are [`super::db_url`]'s.

use std::time::Duration;

use super::db_url::DbUrl;

/// Checks `url` at startup, so that a typo stops the agent with a clear
/// message rather than failing every check.
pub(super) fn validate(url: &str) -> Result<(), String> {
    DbUrl::parse(url, "postgres", 5432).map(|_| ())
}

/// The connection settings of `url`, its password read from wherever it is.
pub(super) fn config(url: &str) -> Result<tokio_postgres::Config, String> {
    let u = DbUrl::parse(url, "postgres", 5432)?;
    let mut c = tokio_postgres::Config::new();
    c.host(&u.host)
        .port(u.port)
        .user(&u.user)
        .application_name("apm-agent");
    if !u.db.is_empty() {
        c.dbname(&u.db);
    }
    if let Some(password) = u.password()? {
        c.password(password);
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
    fn a_url_becomes_the_clients_settings() {
        let c = config("postgres://app:s%40cret@db.internal:6543/shop").expect("inline");
        assert_eq!(c.get_user(), Some("app"));
        assert_eq!(c.get_password(), Some(&b"s@cret"[..]));
        assert_eq!(c.get_dbname(), Some("shop"));
        assert_eq!(c.get_ports(), &[6543]);
        assert_eq!(
            config("postgres://app@h").expect("default").get_ports(),
            &[5432]
        );
        assert!(config("postgres://h:5432/db").is_err());
        // The password is read when connecting, not when validating.
        assert!(config("postgres://app@h/db?password_env=APM_TEST_UNSET_PW_VAR").is_err());
        assert!(validate("postgres://app@h/db?password_file=/nonexistent/pw").is_ok());
    }
}
