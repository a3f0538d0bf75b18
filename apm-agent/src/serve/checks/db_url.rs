//! The URL of a database check, `scheme://user[:password]@host[:port][/db]`,
//! shared by the PostgreSQL and MySQL checks.
//!
//! The password may instead come from a file (`?password_file=/path`, read
//! at every check so a rotated secret is picked up) or an environment
//! variable (`?password_env=NAME`); the query string is never shown.

use percent_encoding::percent_decode_str;

/// Where the password comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Password {
    None,
    /// In the URL itself.
    Inline(String),
    File(String),
    Env(String),
}

/// A parsed database check URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct DbUrl {
    pub host: String,
    pub port: u16,
    pub user: String,
    /// Empty: the server's default.
    pub db: String,
    password: Password,
    /// The scheme's name in messages ("postgres", "mysql").
    kind: &'static str,
}

fn decoded(s: &str) -> String {
    percent_decode_str(s).decode_utf8_lossy().into_owned()
}

impl DbUrl {
    /// Parses `url` (without reading the password: a missing secret fails
    /// the check, not the agent), for the `kind` of server whose port is
    /// `default_port` unless the URL says.
    pub fn parse(url: &str, kind: &'static str, default_port: u16) -> Result<Self, String> {
        let u = url::Url::parse(url).map_err(|e| format!("invalid {kind} URL: {e}"))?;
        let example = format!("{kind}://user@host:{default_port}/db");
        let host = u
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| format!("a {kind} check needs a host: {example}"))?;
        let user = decoded(u.username());
        if user.is_empty() {
            return Err(format!("a {kind} check needs a user: {example}"));
        }
        let mut password = match u.password() {
            Some(p) => Password::Inline(decoded(p)),
            None => Password::None,
        };
        for (key, value) in u.query_pairs() {
            password = match (&*key, password) {
                ("password_file", Password::None) => Password::File(value.into_owned()),
                ("password_env", Password::None) => Password::Env(value.into_owned()),
                ("password_file" | "password_env", _) => {
                    return Err(format!(
                        "give the {kind} password once: in the URL, password_file or password_env"
                    ));
                }
                (other, _) => {
                    return Err(format!(
                        "unknown {kind} check option {other:?} (known: password_file, password_env)"
                    ));
                }
            };
        }
        Ok(Self {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port: u.port().unwrap_or(default_port),
            user,
            db: decoded(u.path().trim_start_matches('/')),
            password,
            kind,
        })
    }

    /// The password, read now from wherever it is (None: no password).
    pub fn password(&self) -> Result<Option<String>, String> {
        let kind = self.kind;
        match &self.password {
            Password::None => Ok(None),
            Password::Inline(p) => Ok(Some(p.clone())),
            Password::File(path) => std::fs::read_to_string(path)
                .map(|text| Some(text.trim_end_matches(['\n', '\r']).to_owned()))
                .map_err(|e| format!("reading the {kind} password file {path}: {e}")),
            Password::Env(name) => std::env::var(name)
                .map(Some)
                .map_err(|_| format!("the {kind} password variable {name} is not set")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_the_password_from_anywhere_once() {
        let u = DbUrl::parse(
            "postgres://app:s%40cret@db.internal:6543/shop",
            "postgres",
            5432,
        )
        .expect("inline");
        assert_eq!((u.user.as_str(), u.db.as_str()), ("app", "shop"));
        assert_eq!((u.host.as_str(), u.port), ("db.internal", 6543));
        assert_eq!(u.password(), Ok(Some("s@cret".to_owned())));
        let path = std::env::temp_dir().join(format!("apm-db-pw-{}", std::process::id()));
        std::fs::write(&path, "fromfile\n").expect("write");
        let u = DbUrl::parse(
            &format!("mysql://app@[::1]/db?password_file={}", path.display()),
            "mysql",
            3306,
        )
        .expect("file");
        assert_eq!((u.host.as_str(), u.port), ("::1", 3306));
        assert_eq!(u.password(), Ok(Some("fromfile".to_owned())));
        std::fs::remove_file(&path).ok();
        let env = DbUrl::parse(
            "mysql://app@h/db?password_env=APM_TEST_UNSET_PW_VAR",
            "mysql",
            3306,
        )
        .expect("env");
        assert!(
            env.password()
                .expect_err("unset")
                .contains("APM_TEST_UNSET_PW_VAR")
        );
        // Parsed without reading the secret: it may appear later.
        assert!(
            DbUrl::parse(
                "mysql://app@h/db?password_file=/nonexistent/pw",
                "mysql",
                3306
            )
            .is_ok()
        );
        let no_user = DbUrl::parse("mysql://h:3306/db", "mysql", 3306).expect_err("no user");
        assert!(
            no_user.contains("user") && no_user.contains("mysql://"),
            "{no_user}"
        );
        let option = DbUrl::parse("postgres://app@h/db?sslmode=require", "postgres", 5432)
            .expect_err("option");
        assert!(option.contains("sslmode"), "{option}");
        assert!(DbUrl::parse("mysql://app:x@h/db?password_file=/p", "mysql", 3306).is_err());
    }
}
