//! `mysql://user[:password]@host[:port][/db]`: `SELECT 1` through
//! mysql_async, against MySQL or MariaDB, as the application's own health
//! route would run it. The URL and its password sources are
//! [`super::db_url`]'s.

use mysql_async::prelude::Queryable as _;

use super::db_url::DbUrl;

/// Checks `url` at startup, so that a typo stops the agent with a clear
/// message rather than failing every check.
pub(super) fn validate(url: &str) -> Result<(), String> {
    DbUrl::parse(url, "mysql", 3306).map(|_| ())
}

/// The connection settings of `url`, its password read from wherever it is.
fn options(url: &str) -> Result<mysql_async::Opts, String> {
    let u = DbUrl::parse(url, "mysql", 3306)?;
    let password = u.password()?;
    Ok(mysql_async::OptsBuilder::default()
        .ip_or_hostname(u.host)
        .tcp_port(u.port)
        .user(Some(u.user))
        .pass(password)
        .db_name((!u.db.is_empty()).then_some(u.db))
        // Stay on the TCP connection that was asked for: by default the
        // client switches to the server's Unix socket when it is local.
        .prefer_socket(false)
        .into())
}

/// Connects and runs `SELECT 1`; the detail on success, the server's or
/// the connection's error otherwise. The caller bounds the time.
pub(super) async fn select_one(url: &str) -> Result<String, String> {
    let mut conn = mysql_async::Conn::new(options(url)?)
        .await
        .map_err(|e| format!("connect: {}", describe(&e)))?;
    let result = conn
        .query_drop("SELECT 1")
        .await
        .map(|()| "SELECT 1".to_owned())
        .map_err(|e| format!("SELECT 1: {}", describe(&e)));
    let _ = conn.disconnect().await;
    result
}

/// The server's message when there is one, else the innermost cause
/// (mysql_async wraps an I/O error twice, each layer repeating the text).
fn describe(e: &mysql_async::Error) -> String {
    if let mysql_async::Error::Server(server) = e {
        return format!("{} ({}): {}", server.state, server.code, server.message);
    }
    let mut cause: &dyn std::error::Error = e;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    cause.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_becomes_the_clients_options() {
        let o = options("mysql://app:s%40cret@db.internal:3307/shop").expect("inline");
        assert_eq!(o.user(), Some("app"));
        assert_eq!(o.pass(), Some("s@cret"));
        assert_eq!(o.db_name(), Some("shop"));
        assert_eq!(o.tcp_port(), 3307);
        assert!(!o.prefer_socket());
        let o = options("mysql://app@127.0.0.1").expect("defaults");
        assert_eq!((o.tcp_port(), o.db_name(), o.pass()), (3306, None, None));
        assert!(validate("mysql://127.0.0.1/db").is_err());
    }
}
