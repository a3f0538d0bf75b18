//! Redis command names: the only words a RESP command contributes to a
//! label, looked up in the known names ([`super::names`]). Anything else
//! is [`OTHER`].

use std::sync::LazyLock;

use rustc_hash::FxHashMap;

use super::names::{COMMANDS, CONTAINERS, READS, SUBCOMMANDS};

/// The label of a command not in the table (a module's, a newer
/// release's, or junk).
pub const OTHER: &str = "OTHER";

/// What a command means for pairing and for cache results.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A read: hit or miss.
    Read,
    /// Anything else: ok or error.
    Other,
    /// MULTI: the commands after it are queued until EXEC or DISCARD.
    Multi,
    /// EXEC: its reply holds the queued commands' replies.
    Exec,
    /// DISCARD: the queued commands are dropped.
    Discard,
    /// (P|S)SUBSCRIBE and (P|S)UNSUBSCRIBE: answered by push messages.
    Subscription,
    /// RESET: leaves MULTI and subscriptions.
    Reset,
}

/// A command's label and kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Command {
    pub name: &'static str,
    pub kind: Kind,
}

/// Upper-cases a word of at most 32 bytes.
fn upper<'a>(word: &[u8], buf: &'a mut [u8; 40]) -> Option<&'a str> {
    std::str::from_utf8(upper_bytes(word, buf)?).ok()
}

/// [`upper`] without the UTF-8 check, for the table (whose names are
/// ASCII, so no other bytes can match one).
fn upper_bytes<'a>(word: &[u8], buf: &'a mut [u8; 40]) -> Option<&'a [u8]> {
    if word.is_empty() || word.len() > 32 {
        return None;
    }
    let out = &mut buf[..word.len()];
    for (o, b) in out.iter_mut().zip(word) {
        *o = b.to_ascii_uppercase();
    }
    Some(out)
}

/// A top-level command as the table lookup returns it.
struct Entry {
    command: Command,
    /// It has subcommands (`CLIENT SETNAME`).
    container: bool,
}

/// Every top-level command by its upper-case name, with its kind worked
/// out once: a binary search of the name lists per command cost more than
/// the rest of the RESP parsing under redis-benchmark.
static TABLE: LazyLock<FxHashMap<&'static [u8], Entry>> = LazyLock::new(|| {
    COMMANDS
        .iter()
        .map(|&name| {
            let entry = Entry {
                command: Command {
                    name,
                    kind: kind_of(name),
                },
                container: CONTAINERS.binary_search(&name).is_ok(),
            };
            (name.as_bytes(), entry)
        })
        .collect()
});

/// The top-level command named by `word` (any case).
pub fn lookup(word: &[u8]) -> Option<&'static str> {
    entry(word).map(|e| e.command.name)
}

fn entry(word: &[u8]) -> Option<&'static Entry> {
    let mut buf = [0u8; 40];
    TABLE.get(upper_bytes(word, &mut buf)?)
}

/// The command of a frame whose first two words are `first` and `second`.
pub fn command(first: &[u8], second: Option<&[u8]>) -> Command {
    let Some(top) = entry(first) else {
        return Command {
            name: OTHER,
            kind: Kind::Other,
        };
    };
    if top.container
        && let Some(sub) = second
    {
        let mut buf = [0u8; 40];
        if let Some(sub) = upper(sub, &mut buf) {
            let full = format!("{} {sub}", top.command.name);
            if let Ok(i) = SUBCOMMANDS.binary_search(&full.as_str()) {
                let name = SUBCOMMANDS[i];
                return Command {
                    name,
                    kind: kind_of(name),
                };
            }
        }
    }
    top.command
}

fn kind_of(name: &str) -> Kind {
    match name {
        "MULTI" => Kind::Multi,
        "EXEC" => Kind::Exec,
        "DISCARD" => Kind::Discard,
        "RESET" => Kind::Reset,
        "SUBSCRIBE" | "PSUBSCRIBE" | "SSUBSCRIBE" | "UNSUBSCRIBE" | "PUNSUBSCRIBE"
        | "SUNSUBSCRIBE" => Kind::Subscription,
        _ if READS.binary_search(&name).is_ok() => Kind::Read,
        _ => Kind::Other,
    }
}

/// Push-message kinds (RESP2 arrays in subscribed mode, RESP3 `>`).
pub fn is_message(word: &[u8]) -> bool {
    matches!(word, b"message" | b"pmessage" | b"smessage")
}

/// Subscription confirmations: the replies of the subscription commands.
pub fn is_confirmation(word: &[u8]) -> bool {
    matches!(
        word,
        b"subscribe"
            | b"psubscribe"
            | b"ssubscribe"
            | b"unsubscribe"
            | b"punsubscribe"
            | b"sunsubscribe"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_sorted_for_binary_search() {
        for table in [COMMANDS, CONTAINERS, SUBCOMMANDS, READS] {
            assert!(table.windows(2).all(|w| w[0] < w[1]), "{table:?}");
        }
        for c in CONTAINERS {
            assert!(COMMANDS.contains(c));
        }
    }

    #[test]
    fn names_come_from_the_table_only() {
        assert_eq!(command(b"get", None).name, "GET");
        assert_eq!(command(b"GeT", None).kind, Kind::Read);
        assert_eq!(command(b"client", Some(b"setname")).name, "CLIENT SETNAME");
        // An unknown subcommand keeps the container's name, not the word.
        assert_eq!(
            command(b"client", Some(b"alice@example.com")).name,
            "CLIENT"
        );
        assert_eq!(command(b"alice@example.com", None).name, OTHER);
        assert_eq!(command(&[b'g'; 100], None).name, OTHER);
        assert_eq!(command(b"\xff\xfe", None).name, OTHER);
        assert_eq!(command(b"exec", None).kind, Kind::Exec);
        assert_eq!(
            command(b"SUBSCRIBE", Some(b"news")).kind,
            Kind::Subscription
        );
        assert_eq!(command(b"set", Some(b"k")).kind, Kind::Other);
    }
}
