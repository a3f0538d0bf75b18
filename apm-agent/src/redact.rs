//! Credentials out of URLs before they are shown anywhere: labels, JSON,
//! logs and errors print [`url`]'s result, never the URL a user gave.

/// `url` without its userinfo (user and password), query and fragment:
/// `redis://:pw@cache:6379/0?password=x` → `redis://cache:6379/0`. Text that
/// does not parse as a URL is cut the same way by hand.
pub fn url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut u) if u.has_host() => {
            // Cannot fail for a URL with a host.
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.set_fragment(None);
            u.to_string()
        }
        _ => by_hand(raw),
    }
}

fn by_hand(raw: &str) -> String {
    let raw = raw.split(['?', '#']).next().unwrap_or_default();
    let Some((scheme, rest)) = raw.split_once("://") else {
        // No authority: anything before an '@' could be a credential.
        return raw
            .rsplit_once('@')
            .map_or(raw, |(_, host)| host)
            .to_owned();
    };
    let (authority, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    format!("{scheme}://{host}{path}")
}

/// A secret from the command line or environment (a token, a password):
/// its Debug output never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(redacted)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_query_and_fragment_are_removed() {
        for (raw, shown) in [
            ("redis://:hunter2@127.0.0.1:6379", "redis://127.0.0.1:6379"),
            ("redis://bob:hunter2@cache:6379/0", "redis://cache:6379/0"),
            ("redis://cache:6379?password=hunter2", "redis://cache:6379"),
            (
                "postgres://app:hunter2@db:5432/shop#x",
                "postgres://db:5432/shop",
            ),
            ("tcp://127.0.0.1:5432", "tcp://127.0.0.1:5432"),
            ("http://u:hunter2@[::1]:9093/", "http://[::1]:9093/"),
            // Not a URL the parser takes: cut by hand.
            ("redis://:hunter2@bad host:1/x", "redis://bad host:1/x"),
            ("hunter2@host", "host"),
        ] {
            let got = url(raw);
            assert_eq!(got, shown, "{raw}");
            assert!(!got.contains("hunter2"), "{got}");
        }
    }

    #[test]
    fn secrets_do_not_debug_print() {
        let s = Secret::new("hunter2");
        assert_eq!(s.expose(), "hunter2");
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
