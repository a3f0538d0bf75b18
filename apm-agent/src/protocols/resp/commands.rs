//! Redis command names: the only words a RESP command contributes to a
//! label. Taken from `COMMAND LIST` of Redis 7.0, plus the commands of
//! later releases that clients send on connect or that are common
//! (`CLIENT SETINFO`, hash-field expiry). Anything else is [`OTHER`].

use std::sync::LazyLock;

use rustc_hash::FxHashMap;

/// The label of a command not in the table (a module's, a newer
/// release's, or junk).
pub const OTHER: &str = "OTHER";

/// Top-level commands, upper case, sorted.
const COMMANDS: &[&str] = &[
    "ACL",
    "APPEND",
    "ASKING",
    "AUTH",
    "BGREWRITEAOF",
    "BGSAVE",
    "BITCOUNT",
    "BITFIELD",
    "BITFIELD_RO",
    "BITOP",
    "BITPOS",
    "BLMOVE",
    "BLMPOP",
    "BLPOP",
    "BRPOP",
    "BRPOPLPUSH",
    "BZMPOP",
    "BZPOPMAX",
    "BZPOPMIN",
    "CLIENT",
    "CLUSTER",
    "COMMAND",
    "CONFIG",
    "COPY",
    "DBSIZE",
    "DEBUG",
    "DECR",
    "DECRBY",
    "DEL",
    "DISCARD",
    "DUMP",
    "ECHO",
    "EVAL",
    "EVALSHA",
    "EVALSHA_RO",
    "EVAL_RO",
    "EXEC",
    "EXISTS",
    "EXPIRE",
    "EXPIREAT",
    "EXPIRETIME",
    "FAILOVER",
    "FCALL",
    "FCALL_RO",
    "FLUSHALL",
    "FLUSHDB",
    "FUNCTION",
    "GEOADD",
    "GEODIST",
    "GEOHASH",
    "GEOPOS",
    "GEORADIUS",
    "GEORADIUSBYMEMBER",
    "GEORADIUSBYMEMBER_RO",
    "GEORADIUS_RO",
    "GEOSEARCH",
    "GEOSEARCHSTORE",
    "GET",
    "GETBIT",
    "GETDEL",
    "GETEX",
    "GETRANGE",
    "GETSET",
    "HDEL",
    "HELLO",
    "HEXISTS",
    "HEXPIRE",
    "HEXPIREAT",
    "HEXPIRETIME",
    "HGET",
    "HGETALL",
    "HGETDEL",
    "HGETEX",
    "HINCRBY",
    "HINCRBYFLOAT",
    "HKEYS",
    "HLEN",
    "HMGET",
    "HMSET",
    "HPERSIST",
    "HPEXPIRE",
    "HPEXPIREAT",
    "HPEXPIRETIME",
    "HPTTL",
    "HRANDFIELD",
    "HSCAN",
    "HSET",
    "HSETEX",
    "HSETNX",
    "HSTRLEN",
    "HTTL",
    "HVALS",
    "INCR",
    "INCRBY",
    "INCRBYFLOAT",
    "INFO",
    "KEYS",
    "LASTSAVE",
    "LATENCY",
    "LCS",
    "LINDEX",
    "LINSERT",
    "LLEN",
    "LMOVE",
    "LMPOP",
    "LOLWUT",
    "LPOP",
    "LPOS",
    "LPUSH",
    "LPUSHX",
    "LRANGE",
    "LREM",
    "LSET",
    "LTRIM",
    "MEMORY",
    "MGET",
    "MIGRATE",
    "MODULE",
    "MONITOR",
    "MOVE",
    "MSET",
    "MSETNX",
    "MULTI",
    "OBJECT",
    "PERSIST",
    "PEXPIRE",
    "PEXPIREAT",
    "PEXPIRETIME",
    "PFADD",
    "PFCOUNT",
    "PFDEBUG",
    "PFMERGE",
    "PFSELFTEST",
    "PING",
    "PSETEX",
    "PSUBSCRIBE",
    "PSYNC",
    "PTTL",
    "PUBLISH",
    "PUBSUB",
    "PUNSUBSCRIBE",
    "QUIT",
    "RANDOMKEY",
    "READONLY",
    "READWRITE",
    "RENAME",
    "RENAMENX",
    "REPLCONF",
    "REPLICAOF",
    "RESET",
    "RESTORE",
    "RESTORE-ASKING",
    "ROLE",
    "RPOP",
    "RPOPLPUSH",
    "RPUSH",
    "RPUSHX",
    "SADD",
    "SAVE",
    "SCAN",
    "SCARD",
    "SCRIPT",
    "SDIFF",
    "SDIFFSTORE",
    "SELECT",
    "SET",
    "SETBIT",
    "SETEX",
    "SETNX",
    "SETRANGE",
    "SHUTDOWN",
    "SINTER",
    "SINTERCARD",
    "SINTERSTORE",
    "SISMEMBER",
    "SLAVEOF",
    "SLOWLOG",
    "SMEMBERS",
    "SMISMEMBER",
    "SMOVE",
    "SORT",
    "SORT_RO",
    "SPOP",
    "SPUBLISH",
    "SRANDMEMBER",
    "SREM",
    "SSCAN",
    "SSUBSCRIBE",
    "STRLEN",
    "SUBSCRIBE",
    "SUBSTR",
    "SUNION",
    "SUNIONSTORE",
    "SUNSUBSCRIBE",
    "SWAPDB",
    "SYNC",
    "TIME",
    "TOUCH",
    "TTL",
    "TYPE",
    "UNLINK",
    "UNSUBSCRIBE",
    "UNWATCH",
    "WAIT",
    "WAITAOF",
    "WATCH",
    "XACK",
    "XADD",
    "XAUTOCLAIM",
    "XCLAIM",
    "XDEL",
    "XGROUP",
    "XINFO",
    "XLEN",
    "XPENDING",
    "XRANGE",
    "XREAD",
    "XREADGROUP",
    "XREVRANGE",
    "XSETID",
    "XTRIM",
    "ZADD",
    "ZCARD",
    "ZCOUNT",
    "ZDIFF",
    "ZDIFFSTORE",
    "ZINCRBY",
    "ZINTER",
    "ZINTERCARD",
    "ZINTERSTORE",
    "ZLEXCOUNT",
    "ZMPOP",
    "ZMSCORE",
    "ZPOPMAX",
    "ZPOPMIN",
    "ZRANDMEMBER",
    "ZRANGE",
    "ZRANGEBYLEX",
    "ZRANGEBYSCORE",
    "ZRANGESTORE",
    "ZRANK",
    "ZREM",
    "ZREMRANGEBYLEX",
    "ZREMRANGEBYRANK",
    "ZREMRANGEBYSCORE",
    "ZREVRANGE",
    "ZREVRANGEBYLEX",
    "ZREVRANGEBYSCORE",
    "ZREVRANK",
    "ZSCAN",
    "ZSCORE",
    "ZUNION",
    "ZUNIONSTORE",
];

/// Commands whose second word names a subcommand.
const CONTAINERS: &[&str] = &[
    "ACL", "CLIENT", "CLUSTER", "COMMAND", "CONFIG", "FUNCTION", "LATENCY", "MEMORY", "MODULE",
    "OBJECT", "PUBSUB", "SCRIPT", "SLOWLOG", "XGROUP", "XINFO",
];

/// `CONTAINER SUBCOMMAND`, upper case, sorted.
const SUBCOMMANDS: &[&str] = &[
    "ACL CAT",
    "ACL DELUSER",
    "ACL DRYRUN",
    "ACL GENPASS",
    "ACL GETUSER",
    "ACL HELP",
    "ACL LIST",
    "ACL LOAD",
    "ACL LOG",
    "ACL SAVE",
    "ACL SETUSER",
    "ACL USERS",
    "ACL WHOAMI",
    "CLIENT CACHING",
    "CLIENT GETNAME",
    "CLIENT GETREDIR",
    "CLIENT HELP",
    "CLIENT ID",
    "CLIENT INFO",
    "CLIENT KILL",
    "CLIENT LIST",
    "CLIENT NO-EVICT",
    "CLIENT NO-TOUCH",
    "CLIENT PAUSE",
    "CLIENT REPLY",
    "CLIENT SETINFO",
    "CLIENT SETNAME",
    "CLIENT TRACKING",
    "CLIENT TRACKINGINFO",
    "CLIENT UNBLOCK",
    "CLIENT UNPAUSE",
    "CLUSTER ADDSLOTS",
    "CLUSTER ADDSLOTSRANGE",
    "CLUSTER BUMPEPOCH",
    "CLUSTER COUNT-FAILURE-REPORTS",
    "CLUSTER COUNTKEYSINSLOT",
    "CLUSTER DELSLOTS",
    "CLUSTER DELSLOTSRANGE",
    "CLUSTER FAILOVER",
    "CLUSTER FLUSHSLOTS",
    "CLUSTER FORGET",
    "CLUSTER GETKEYSINSLOT",
    "CLUSTER HELP",
    "CLUSTER INFO",
    "CLUSTER KEYSLOT",
    "CLUSTER LINKS",
    "CLUSTER MEET",
    "CLUSTER MYID",
    "CLUSTER MYSHARDID",
    "CLUSTER NODES",
    "CLUSTER REPLICAS",
    "CLUSTER REPLICATE",
    "CLUSTER RESET",
    "CLUSTER SAVECONFIG",
    "CLUSTER SET-CONFIG-EPOCH",
    "CLUSTER SETSLOT",
    "CLUSTER SHARDS",
    "CLUSTER SLAVES",
    "CLUSTER SLOTS",
    "COMMAND COUNT",
    "COMMAND DOCS",
    "COMMAND GETKEYS",
    "COMMAND GETKEYSANDFLAGS",
    "COMMAND HELP",
    "COMMAND INFO",
    "COMMAND LIST",
    "CONFIG GET",
    "CONFIG HELP",
    "CONFIG RESETSTAT",
    "CONFIG REWRITE",
    "CONFIG SET",
    "FUNCTION DELETE",
    "FUNCTION DUMP",
    "FUNCTION FLUSH",
    "FUNCTION HELP",
    "FUNCTION KILL",
    "FUNCTION LIST",
    "FUNCTION LOAD",
    "FUNCTION RESTORE",
    "FUNCTION STATS",
    "LATENCY DOCTOR",
    "LATENCY GRAPH",
    "LATENCY HELP",
    "LATENCY HISTOGRAM",
    "LATENCY HISTORY",
    "LATENCY LATEST",
    "LATENCY RESET",
    "MEMORY DOCTOR",
    "MEMORY HELP",
    "MEMORY MALLOC-STATS",
    "MEMORY PURGE",
    "MEMORY STATS",
    "MEMORY USAGE",
    "MODULE HELP",
    "MODULE LIST",
    "MODULE LOAD",
    "MODULE LOADEX",
    "MODULE UNLOAD",
    "OBJECT ENCODING",
    "OBJECT FREQ",
    "OBJECT HELP",
    "OBJECT IDLETIME",
    "OBJECT REFCOUNT",
    "PUBSUB CHANNELS",
    "PUBSUB HELP",
    "PUBSUB NUMPAT",
    "PUBSUB NUMSUB",
    "PUBSUB SHARDCHANNELS",
    "PUBSUB SHARDNUMSUB",
    "SCRIPT DEBUG",
    "SCRIPT EXISTS",
    "SCRIPT FLUSH",
    "SCRIPT HELP",
    "SCRIPT KILL",
    "SCRIPT LOAD",
    "SLOWLOG GET",
    "SLOWLOG HELP",
    "SLOWLOG LEN",
    "SLOWLOG RESET",
    "XGROUP CREATE",
    "XGROUP CREATECONSUMER",
    "XGROUP DELCONSUMER",
    "XGROUP DESTROY",
    "XGROUP HELP",
    "XGROUP SETID",
    "XINFO CONSUMERS",
    "XINFO GROUPS",
    "XINFO HELP",
    "XINFO STREAM",
];

/// Read commands: their reply says whether the key was there (a nil
/// reply, an empty aggregate, an array of nils or the integer 0 is a miss).
const READS: &[&str] = &[
    "EXISTS",
    "GET",
    "GETDEL",
    "GETEX",
    "HEXISTS",
    "HGET",
    "HGETALL",
    "HMGET",
    "LINDEX",
    "LRANGE",
    "MGET",
    "SISMEMBER",
    "SMEMBERS",
    "ZRANGE",
    "ZSCORE",
];

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
