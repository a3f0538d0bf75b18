//! Redis (RESP) pairing per connection: commands in the order they arrive,
//! replies in the same order.
//!
//! Pipelines pair one reply to one command; MULTI's queued commands are
//! answered `+QUEUED` and their results come in EXEC's reply, child by
//! child. Pub/sub is followed only once a subscription command was sent:
//! it is answered by its first confirmation, and the others it gets (one
//! per channel named, or per channel subscribed for an UNSUBSCRIBE naming
//! none) are not replies. An array that starts like a confirmation is one
//! only when such a command waits for it or, in RESP2, while the connection
//! is subscribed (then message arrays are pushes too); otherwise it is a
//! reply (SMEMBERS of a set holding "subscribe"). RESP3 pushes (`>`) are
//! never replies. A gap (bytes never seen)
//! drops the commands waiting on it and resyncs: commands at the next
//! piece that starts like a command, replies once a command after it
//! arrives. A reply whose framing is lost (a header past the capture)
//! leaves the waiting commands to end at the last reply byte before the
//! next command, like an HTTP response of unknown length; their results
//! are not known.

use std::{collections::VecDeque, net::IpAddr};

use super::{
    pairing::{Event, Flow, Origin, Unpaired},
    table::{EVICTABLE_NS, Full, LastSeen, Table},
};
use crate::protocols::resp::{
    Desync, Frame, Outcome, Parser,
    commands::{self, Command, Kind},
};

/// Commands that may wait for replies on one connection.
pub const MAX_PENDING: usize = 1024;
/// Commands queued in one MULTI whose results are followed.
const MAX_QUEUED: usize = 1024;

/// Whose connection: the server side (a monitored redis-server), or a
/// monitored client's connection to `server` at `port`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Peer {
    pub origin: Origin,
    /// The server's port.
    pub port: u16,
    /// The server's address, for a client-side connection.
    pub server: Option<IpAddr>,
}

/// What a command's reply says, as a cache operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CacheResult {
    Hit,
    Miss,
    Ok,
    Error,
}

impl CacheResult {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Miss => "miss",
            Self::Ok => "ok",
            Self::Error => "error",
        }
    }

    fn of(cmd: Command, outcome: Outcome, children: &[Outcome]) -> Self {
        if outcome == Outcome::Error {
            return Self::Error;
        }
        if cmd.kind != Kind::Read {
            return Self::Ok;
        }
        let all_nil = !children.is_empty() && children.iter().all(|c| *c == Outcome::Nil);
        if matches!(outcome, Outcome::Nil | Outcome::Empty | Outcome::Zero) || all_nil {
            Self::Miss
        } else {
            Self::Hit
        }
    }
}

/// Where RESP pairing results go.
pub trait CommandSink {
    /// A command answered: its duration, when its answer ended (kernel
    /// clock) and the thread that sent it (0: not known).
    fn completed(&mut self, peer: &Peer, cmd: Command, duration_ns: u64, end_ns: u64, tid: u32);
    /// The command's result, when its reply was seen (for a queued
    /// command, in EXEC's reply).
    fn result(&mut self, peer: &Peer, cmd: Command, result: CacheResult);
    fn unpaired(&mut self, peer: &Peer, reason: Unpaired);
}

#[derive(Clone, Copy, Debug)]
struct Pending {
    cmd: Command,
    start_ns: u64,
    /// The thread that sent its first byte.
    tid: u32,
    /// Arguments after the name: the channels a subscription command names.
    args: u32,
}

/// A connection's subscriptions, as the server's confirmations count them.
#[derive(Clone, Copy, Debug, Default)]
struct Subs {
    channels: u64,
    patterns: u64,
    shards: u64,
    /// The subscription command answered last and how many of its
    /// confirmations are still to come.
    more: Option<(Command, u64)>,
    /// Pushes were seen: confirmations and messages come as `>`, so arrays
    /// are replies even while subscribed.
    resp3: bool,
}

impl Subs {
    /// RESP2's subscribed mode: arrays are confirmations, messages, or
    /// PING's `pong`.
    fn subscribed(&self) -> bool {
        !self.resp3 && (self.channels > 0 || self.patterns > 0 || self.shards > 0)
    }

    /// Subscriptions of the kind a confirmation of kind `word` is about.
    fn of(&self, word: &[u8]) -> u64 {
        match word {
            b"subscribe" | b"unsubscribe" => self.channels,
            b"psubscribe" | b"punsubscribe" => self.patterns,
            _ => self.shards,
        }
    }

    /// A confirmation's count: channels and patterns together, shard
    /// channels on their own.
    fn count(&mut self, word: &[u8], count: Option<i64>) {
        let Some(n) = count.and_then(|n| u64::try_from(n).ok()) else {
            return;
        };
        match word {
            b"subscribe" | b"unsubscribe" => {
                self.patterns = self.patterns.min(n);
                self.channels = n - self.patterns;
            }
            b"psubscribe" | b"punsubscribe" => {
                self.channels = self.channels.min(n);
                self.patterns = n - self.channels;
            }
            _ => self.shards = n,
        }
    }
}

/// Whether a confirmation of kind `word` answers `cmd` (`subscribe`
/// answers SUBSCRIBE, `punsubscribe` PUNSUBSCRIBE).
fn confirms(cmd: Command, word: &[u8]) -> bool {
    cmd.kind == Kind::Subscription && cmd.name.as_bytes().eq_ignore_ascii_case(word)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Replies {
    Parsing,
    /// Framing lost: the waiting commands end at the last reply piece
    /// before the next command piece.
    Unframed,
    /// After a gap: reply bytes are ignored until a command arrives.
    Lost,
}

struct Conn {
    peer: Peer,
    commands: Parser,
    replies: Parser,
    pending: VecDeque<Pending>,
    /// Commands answered `+QUEUED`, waiting for EXEC.
    queued: Vec<Command>,
    multi: bool,
    subs: Subs,
    /// When the command being parsed began, and the thread that sent it.
    cmd_start: (u64, u32),
    /// Commands lost track of: wait for a piece that starts like one.
    commands_lost: bool,
    reply_state: Replies,
    last_reply_ns: u64,
    last_seen_ns: u64,
}

pub struct Tracker {
    /// Keyed by kernel-made ids (socket cookies, tgid and fd).
    conns: Table<Conn>,
}

impl Tracker {
    pub fn new(max_conns: usize) -> Self {
        Self {
            conns: Table::new(max_conns),
        }
    }

    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    pub fn has(&self, conn: u64) -> bool {
        self.conns.contains(conn)
    }

    /// Starts following `conn` as RESP. A connection first seen by a
    /// reply starts lost (its commands were before the capture). False
    /// when the table is full of connections seen in the last second: a
    /// command piece then counts once as [`Unpaired::TableFull`].
    pub fn open(&mut self, ev: &Event<'_>, peer: Peer, sink: &mut impl CommandSink) -> bool {
        let reply_first = ev.kind != Flow::ToServer;
        let conn = Conn {
            peer,
            commands: Parser::new(true),
            replies: Parser::new(false),
            pending: VecDeque::new(),
            queued: Vec::new(),
            multi: false,
            subs: Subs::default(),
            cmd_start: (ev.ts_ns, ev.tid),
            commands_lost: false,
            reply_state: if reply_first {
                Replies::Lost
            } else {
                Replies::Parsing
            },
            last_reply_ns: ev.ts_ns,
            last_seen_ns: ev.ts_ns,
        };
        match self.conns.insert(ev.conn, conn, ev.ts_ns, EVICTABLE_NS) {
            Ok(evicted) => {
                if let Some(old) = evicted {
                    finish(old, sink, Unpaired::Evicted);
                }
                true
            }
            Err(Full) => {
                if !reply_first {
                    sink.unpaired(&peer, Unpaired::TableFull);
                }
                false
            }
        }
    }

    /// A piece of a RESP connection: `ToServer` carries commands, `FromServer` and
    /// `Sendfile` replies.
    pub fn handle(&mut self, ev: &Event<'_>, sink: &mut impl CommandSink) {
        let Some(conn) = self.conns.get_mut(ev.conn) else {
            return;
        };
        conn.last_seen_ns = ev.ts_ns;
        let total = ev.ret.max(0) as u64;
        match ev.kind {
            Flow::ToServer => on_commands(conn, ev.data, total, (ev.ts_ns, ev.tid), sink),
            Flow::FromServer | Flow::Sendfile => on_replies(conn, ev.data, total, ev.ts_ns, sink),
            _ => {}
        }
    }

    /// The connection ended.
    pub fn close(&mut self, conn: u64, sink: &mut impl CommandSink) {
        if let Some(c) = self.conns.remove(conn) {
            finish(c, sink, Unpaired::ClosedMidRequest);
        }
    }

    /// Bytes of `conn` were never seen: drop what waits and resync.
    pub fn gap(&mut self, conn: u64, sink: &mut impl CommandSink) {
        let Some(c) = self.conns.peek_mut(conn) else {
            return;
        };
        let dropped = c.pending.len().max(1);
        c.pending.clear();
        for _ in 0..dropped {
            sink.unpaired(&c.peer, Unpaired::Gap);
        }
        c.queued.clear();
        c.subs.more = None;
        c.commands.reset();
        c.commands_lost = true;
        c.reply_state = Replies::Lost;
    }

    /// Forgets connections idle for longer than `idle_ns`.
    pub fn sweep(&mut self, now_ns: u64, idle_ns: u64, sink: &mut impl CommandSink) {
        for c in self.conns.sweep(now_ns, idle_ns) {
            finish(c, sink, Unpaired::Evicted);
        }
    }
}

impl LastSeen for Conn {
    fn last_seen_ns(&self) -> u64 {
        self.last_seen_ns
    }
}

fn finish(mut c: Conn, sink: &mut impl CommandSink, reason: Unpaired) {
    if c.reply_state == Replies::Unframed {
        end_unframed(&mut c, sink);
    }
    for _ in c.pending.drain(..) {
        sink.unpaired(&c.peer, reason);
    }
}

/// The waiting commands whose reply framing was lost end at the last
/// reply piece.
fn end_unframed(c: &mut Conn, sink: &mut impl CommandSink) {
    for p in c.pending.drain(..) {
        let end = c.last_reply_ns;
        sink.completed(&c.peer, p.cmd, end.saturating_sub(p.start_ns), end, p.tid);
    }
    c.queued.clear();
    c.multi = false;
}

/// `at`: when these bytes came and the thread that sent them.
fn on_commands(c: &mut Conn, data: &[u8], total: u64, at: (u64, u32), sink: &mut impl CommandSink) {
    match c.reply_state {
        Replies::Parsing => {}
        Replies::Unframed => {
            end_unframed(c, sink);
            c.replies.reset();
            c.reply_state = Replies::Parsing;
        }
        Replies::Lost => {
            c.replies.reset();
            c.reply_state = Replies::Parsing;
        }
    }
    if c.commands_lost {
        if !crate::protocols::resp::starts_like_command(data) {
            return;
        }
        c.commands.reset();
        c.commands_lost = false;
    }
    if c.commands.idle() {
        c.cmd_start = at;
    }
    let start = std::cell::Cell::new(c.cmd_start);
    let Conn {
        peer,
        commands,
        pending,
        ..
    } = c;
    let result = commands.feed(
        data,
        total,
        || start.set(at),
        |f| {
            if !matches!(f.kind, b'*' | b'i') {
                return;
            }
            let Some(name) = f.word(0) else {
                return;
            };
            let cmd = commands::command(name, f.word(1));
            if pending.len() >= MAX_PENDING {
                sink.unpaired(peer, Unpaired::QueueFull);
            } else {
                let (start_ns, tid) = start.get();
                pending.push_back(Pending {
                    cmd,
                    start_ns,
                    tid,
                    args: u32::try_from(f.arity().saturating_sub(1)).unwrap_or(u32::MAX),
                });
            }
        },
    );
    c.cmd_start = start.get();
    if let Err(e) = result {
        let reason = match e {
            Desync::Truncated => Unpaired::Truncated,
            Desync::Invalid => Unpaired::Malformed,
        };
        sink.unpaired(&c.peer, reason);
        c.commands_lost = true;
    }
}

fn on_replies(c: &mut Conn, data: &[u8], total: u64, ts_ns: u64, sink: &mut impl CommandSink) {
    c.last_reply_ns = ts_ns;
    if c.reply_state != Replies::Parsing {
        return;
    }
    let Conn {
        peer,
        replies,
        pending,
        queued,
        multi,
        subs,
        ..
    } = c;
    let mut state = ReplyCtx {
        peer,
        pending,
        queued,
        multi,
        subs,
        ts_ns,
    };
    let result = replies.feed(data, total, || {}, |f| state.reply(f, sink));
    if result.is_err() {
        c.replies.reset();
        c.reply_state = Replies::Unframed;
    }
}

struct ReplyCtx<'a> {
    peer: &'a Peer,
    pending: &'a mut VecDeque<Pending>,
    queued: &'a mut Vec<Command>,
    multi: &'a mut bool,
    subs: &'a mut Subs,
    ts_ns: u64,
}

impl ReplyCtx<'_> {
    fn reply(&mut self, f: &Frame, sink: &mut impl CommandSink) {
        let first = f.word(0).unwrap_or(&[]);
        if f.kind == b'>' {
            self.subs.resp3 = true;
            if commands::is_confirmation(first) {
                self.confirmation(f, first, sink);
            }
            // Messages and other pushes (client-side caching
            // invalidations) are not replies.
            return;
        }
        let subscribed = self.subs.subscribed();
        if f.kind == b'*' && commands::is_confirmation(first) && (subscribed || self.awaits(first))
        {
            self.confirmation(f, first, sink);
            return;
        }
        self.subs.more = None;
        if subscribed && f.kind == b'*' && commands::is_message(first) {
            return;
        }
        let Some(p) = self.pending.pop_front() else {
            sink.unpaired(self.peer, Unpaired::ResponseWithoutRequest);
            return;
        };
        let duration = self.ts_ns.saturating_sub(p.start_ns);
        sink.completed(self.peer, p.cmd, duration, self.ts_ns, p.tid);
        let queued = *self.multi && f.kind == b'+' && first == b"QUEUED";
        match p.cmd.kind {
            _ if queued => {
                if self.queued.len() < MAX_QUEUED {
                    self.queued.push(p.cmd);
                }
                return;
            }
            Kind::Multi => *self.multi = f.outcome != Outcome::Error,
            Kind::Exec => {
                *self.multi = false;
                if f.outcome == Outcome::Value {
                    for (i, cmd) in self.queued.drain(..).enumerate() {
                        if let Some(&child) = f.children.get(i) {
                            sink.result(self.peer, cmd, CacheResult::of(cmd, child, &[]));
                        }
                    }
                }
                self.queued.clear();
            }
            Kind::Discard => {
                *self.multi = false;
                self.queued.clear();
            }
            Kind::Reset => {
                *self.multi = false;
                *self.subs = Subs::default();
                self.queued.clear();
            }
            _ => {}
        }
        sink.result(
            self.peer,
            p.cmd,
            CacheResult::of(p.cmd, f.outcome, &f.children),
        );
    }

    /// Whether a confirmation of kind `word` is waited for: another of
    /// the command answered last, or the first of the command waiting.
    fn awaits(&self, word: &[u8]) -> bool {
        self.subs.more.is_some_and(|(cmd, _)| confirms(cmd, word))
            || self.pending.front().is_some_and(|p| confirms(p.cmd, word))
    }

    /// A subscription confirmation: the rest of the command answered last,
    /// or the answer of the subscription command waiting first; one that
    /// nothing waits for (subscribed, or pushed) is not a reply.
    fn confirmation(&mut self, f: &Frame, word: &[u8], sink: &mut impl CommandSink) {
        let before = self.subs.of(word);
        self.subs.count(word, f.int);
        if let Some((cmd, left)) = &mut self.subs.more
            && confirms(*cmd, word)
        {
            *left -= 1;
            if *left == 0 {
                self.subs.more = None;
            }
            return;
        }
        self.subs.more = None;
        if !self.pending.front().is_some_and(|p| confirms(p.cmd, word)) {
            return;
        }
        let Some(p) = self.pending.pop_front() else {
            return;
        };
        sink.completed(
            self.peer,
            p.cmd,
            self.ts_ns.saturating_sub(p.start_ns),
            self.ts_ns,
            p.tid,
        );
        sink.result(self.peer, p.cmd, CacheResult::Ok);
        // One confirmation per channel named; an unsubscribe naming none
        // gets one per channel subscribed, or one if there is none.
        let expected = match p.args {
            0 if word.ends_with(b"unsubscribe") => before.max(1),
            0 => 1,
            n => u64::from(n),
        };
        if expected > 1 {
            self.subs.more = Some((p.cmd, expected - 1));
        }
    }
}

#[cfg(test)]
mod tests;
