//! Joining spans into traces, in bounded memory, in the pipeline's
//! thread. Evidence, strongest first:
//!
//! 1. `traceparent`: a server span whose request named its caller's span
//!    takes that trace id and parent.
//! 2. The connection: a monitored client's HTTP call and a monitored
//!    server's request whose first bytes carry the same TCP sequence number
//!    between the same client and server ports are one exchange seen at
//!    both sockets; the server span becomes the call's child.
//! 3. Nesting: a call made while exactly one server request of its service
//!    was in flight, lying inside it, with no other request of the service
//!    overlapping it (nor one lost unpaired), is that request's child,
//!    unless another thread or process than the one that sent the
//!    request's response sent it (both known: a background thread's call,
//!    such as an exporter's). Anything else (several requests in flight,
//!    none, a call whose request never ends, another thread) is counted as
//!    unplaced and starts a trace of its own.
//!
//! A span with no local parent is a root; its trace is handed on `grace`
//! after it ends (children end before their parents, and the pipeline
//! sees both ends of an exchange within a ring drain of each other).

use std::{collections::VecDeque, sync::Arc};

use rustc_hash::FxHashMap;

use super::{
    Join, Kind, Placed, Span, Trace,
    arena::{Arena, Ref},
};

/// Why a call was not placed under a request (`reason` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Unplaced {
    /// No request of its service was in flight: a background call.
    NoRequest,
    /// Several requests of its service were in flight, or another one
    /// overlapped it.
    Ambiguous,
    /// The request it was made in never completed in time.
    Timeout,
    /// Another thread than the request's sent it.
    OtherThread,
}

impl Unplaced {
    pub const ALL_CALLS: [Unplaced; 4] = [
        Self::NoRequest,
        Self::Ambiguous,
        Self::Timeout,
        Self::OtherThread,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::NoRequest => "no_request",
            Self::Ambiguous => "ambiguous",
            Self::Timeout => "timeout",
            Self::OtherThread => "other_thread",
        }
    }
}

/// How much the assembler holds and for how long.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Spans waiting for their trace to end, at most.
    pub max_pending: usize,
    /// How long a root waits after it ends for late children.
    pub grace_ns: u64,
    /// How long a call waits for the request it was made in.
    pub max_wait_ns: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_pending: 65_536,
            grace_ns: 500_000_000,
            max_wait_ns: 30_000_000_000,
        }
    }
}

/// Server requests remembered per service for overlap checks, at most.
const MAX_RECENT_REQUESTS: usize = 4096;
/// Calls under way remembered at most (beyond, their server spans are
/// not held for them).
const MAX_OPEN_CALLS: usize = 65_536;
/// Calls waiting for their request at most (each stays listed until its
/// wait is over).
const MAX_WAITING: usize = 262_144;

/// A service's recent server requests: (start, end).
#[derive(Default)]
struct Requests {
    spans: VecDeque<(u64, u64)>,
    /// The latest end of a request no longer remembered: a call that
    /// started before it cannot be checked.
    forgotten_end: u64,
}

/// What was lost since the last [`Assembler::take_losses`].
#[derive(Default)]
pub struct Losses {
    /// Spans dropped because the assembler was full.
    pub full: u64,
    pub unplaced: FxHashMap<(Arc<str>, Unplaced), u64>,
}

/// Spans of one end of an exchange waiting for the other, by (server
/// port, client port, sequence number), forgotten in the order they came.
#[derive(Default)]
struct Wire {
    by_key: FxHashMap<(u16, u16, u32), Ref>,
    /// (end, key, span) in the order put.
    order: VecDeque<(u64, (u16, u16, u32), Ref)>,
}

impl Wire {
    fn take(&mut self, key: (u16, u16, u32)) -> Option<Ref> {
        self.by_key.remove(&key)
    }

    fn put(&mut self, key: (u16, u16, u32), r: Ref, end_ns: u64) {
        self.by_key.insert(key, r);
        self.order.push_back((end_ns, key, r));
    }

    /// Forgets what ended before `horizon`.
    fn expire(&mut self, horizon: u64) {
        while let Some(&(end, key, r)) = self.order.front() {
            if end >= horizon {
                break;
            }
            self.order.pop_front();
            // A newer span may hold the key now: only this one goes.
            if self.by_key.get(&key) == Some(&r) {
                self.by_key.remove(&key);
            }
        }
    }
}

pub struct Assembler {
    limits: Limits,
    nodes: Arena,
    /// Server spans whose client call was not seen yet.
    servers: Wire,
    /// Client calls whose server span was not seen yet.
    calls: Wire,
    /// Calls waiting for the request they were made in, per service.
    nesting: FxHashMap<Arc<str>, Vec<Ref>>,
    /// Per service: its recent requests.
    requests: FxHashMap<Arc<str>, Requests>,
    /// Clients' HTTP calls under way, by (server port, client port,
    /// sequence number): the server spans a local client may yet claim.
    open_calls: FxHashMap<(u16, u16, u32), u64>,
    /// Roots to hand on (and unplaced calls), due a grace period after they
    /// end: in about the order they come.
    roots: VecDeque<(u64, Ref)>,
    /// Calls that stop waiting for their request, due `max_wait` after
    /// they end.
    waits: VecDeque<(u64, Ref)>,
    losses: Losses,
}

impl Assembler {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            nodes: Arena::default(),
            servers: Wire::default(),
            calls: Wire::default(),
            nesting: FxHashMap::default(),
            requests: FxHashMap::default(),
            open_calls: FxHashMap::default(),
            roots: VecDeque::new(),
            waits: VecDeque::new(),
            losses: Losses::default(),
        }
    }

    /// Spans held.
    pub fn pending(&self) -> usize {
        self.nodes.len()
    }

    pub fn take_losses(&mut self) -> Losses {
        std::mem::take(&mut self.losses)
    }

    /// Holds `span`; `None` (counted) when full.
    fn hold(&mut self, span: Span) -> Option<Ref> {
        if self.nodes.len() >= self.limits.max_pending {
            self.losses.full += 1;
            return None;
        }
        Some(self.nodes.insert(span))
    }

    fn adopt(&mut self, parent: Ref, child: Ref, join: Join) {
        if let Some(c) = self.nodes.get_mut(child) {
            c.parent = Some(parent);
            c.join = join;
        }
        if let Some(p) = self.nodes.get_mut(parent) {
            p.children.push(child);
        }
    }

    /// A client's HTTP call to server port `key.0` from client port `key.1`
    /// began at `start_ns` with the byte of sequence number `key.2`.
    pub fn call_started(&mut self, key: (u16, u16, u32), start_ns: u64) {
        if self.open_calls.len() < MAX_OPEN_CALLS {
            self.open_calls.insert(key, start_ns);
        }
    }

    /// Whether a server request of `service` (its first byte's `wire`
    /// key; with a `traceparent`: `remote`) may be joined on this host: a
    /// local client's call carried it, or calls of its service wait for a
    /// request. Else its trace is whole as it ends ([`Assembler::alone`]).
    pub fn joinable(&self, service: &str, wire: Option<(u16, u16, u32)>, remote: bool) -> bool {
        let called = !remote && wire.is_some_and(|k| self.open_calls.contains_key(&k));
        called || self.nesting.contains_key(service)
    }

    /// A request nothing can join ended: remembered for overlap checks,
    /// and its trace of one span is whole (with `trace_id` unless the
    /// caller named one).
    pub fn alone(&mut self, span: Span, trace_id: [u8; 16]) -> Trace {
        self.remember(&span.service, (span.start_ns, span.end_ns));
        let root = Placed {
            span,
            parent: None,
            join: Join::Root,
        };
        whole(vec![root], || trace_id)
    }

    /// A server request that may be joined ended ([`Assembler::joinable`]).
    pub fn server(&mut self, span: Span) {
        let request = (span.start_ns, span.end_ns, span.thread, span.pid);
        let (remote, wire) = (span.remote.is_some(), span.wire);
        let service = span.service.clone();
        let Some(me) = self.hold(span) else {
            // Not held, but it still overlaps the calls it may have made.
            self.remember(&service, (request.0, request.1));
            return;
        };
        let end = request.1;
        // A request that named its caller is a root (`whole`); any other
        // may be a local client's call.
        if !remote && let Some(key) = wire {
            match self.calls.take(key) {
                Some(call) if self.nodes.get(call).is_some() => {
                    self.adopt(call, me, Join::Connection)
                }
                _ => self.servers.put(key, me, end),
            }
        }
        if self.nesting.contains_key(&service) {
            self.claim_calls(&service, me, request);
        }
        // After its own claims: it overlaps every call it holds.
        self.remember(&service, (request.0, request.1));
        self.roots
            .push_back((end.saturating_add(self.limits.grace_ns), me));
    }

    /// Remembers a request of `service` for overlap checks.
    pub fn remember(&mut self, service: &Arc<str>, request: (u64, u64)) {
        match self.requests.get_mut(service) {
            Some(r) => r.add(request),
            None => self
                .requests
                .entry(service.clone())
                .or_default()
                .add(request),
        }
    }

    /// A request of `service` will never end as a span (unpaired): calls
    /// that started before `now_ns` cannot be checked for overlaps any
    /// more.
    pub fn request_lost(&mut self, service: &Arc<str>, now_ns: u64) {
        if let Some(r) = self.requests.get_mut(service) {
            r.forgotten_end = r.forgotten_end.max(now_ns);
        } else if self.nesting.contains_key(service) {
            let r = self.requests.entry(service.clone()).or_default();
            r.forgotten_end = now_ns;
        }
    }

    /// The calls of `service` waiting for a request that lie inside
    /// request `me` ([start, end], its response sent by `thread` of
    /// process `pid`) are its children, unless another request overlapped
    /// them or another thread or process sent them. A call outside it
    /// waits on: it was the only request in flight when the call ended,
    /// so the call's request is another one, still to end.
    fn claim_calls(
        &mut self,
        service: &Arc<str>,
        me: Ref,
        (start, end, thread, pid): (u64, u64, u32, Option<u32>),
    ) {
        let Some(waiting) = self.nesting.get_mut(service) else {
            return;
        };
        let mut placed = Vec::new();
        let mut refused = Vec::new();
        waiting.retain(|&call| {
            let Some(c) = self.nodes.get(call) else {
                return false;
            };
            let (c_start, c_end) = (c.span.start_ns, c.span.end_ns);
            // Both ends on the kernel's one clock: no slack.
            if c_start < start || c_end > end {
                return true;
            }
            let overlapped = self.requests.get(service).is_some_and(|r| {
                c_start < r.forgotten_end || r.spans.iter().any(|&(s, e)| s < c_end && e > c_start)
            });
            let other_thread = (c.span.thread != 0 && thread != 0 && c.span.thread != thread)
                || pid.is_some_and(|p| c.span.pid.is_some_and(|cp| cp != p));
            if overlapped {
                refused.push((call, Unplaced::Ambiguous));
            } else if other_thread {
                refused.push((call, Unplaced::OtherThread));
            } else {
                placed.push(call);
            }
            false
        });
        if waiting.is_empty() {
            self.nesting.remove(service);
        }
        for call in placed {
            self.adopt(me, call, Join::Nesting);
        }
        for (call, why) in refused {
            self.unplace(service, call, why);
        }
    }

    /// A monitored client's call ended, when `in_flight` server requests
    /// of its service were in flight; the span held, if it was.
    pub fn call(&mut self, span: Span, in_flight: u64) -> Option<Ref> {
        debug_assert_eq!(span.kind, Kind::Client);
        let (service, end, wire) = (span.service.clone(), span.end_ns, span.wire);
        if let Some(key) = wire {
            self.open_calls.remove(&key);
        }
        let me = self.hold(span)?;
        if let Some(key) = wire {
            match self.servers.take(key) {
                Some(server) if self.nodes.get(server).is_some() => {
                    self.adopt(me, server, Join::Connection)
                }
                _ => self.calls.put(key, me, end),
            }
        }
        match in_flight {
            0 => self.unplace(&service, me, Unplaced::NoRequest),
            // Waits bounded: past them a call is not waited for.
            1 if self.waits.len() < MAX_WAITING => {
                self.nesting.entry(service).or_default().push(me);
                self.waits
                    .push_back((end.saturating_add(self.limits.max_wait_ns), me));
            }
            1 => self.unplace(&service, me, Unplaced::Timeout),
            _ => self.unplace(&service, me, Unplaced::Ambiguous),
        }
        Some(me)
    }

    /// Call `me` starts a trace of its own.
    fn unplace(&mut self, service: &Arc<str>, me: Ref, why: Unplaced) {
        *self
            .losses
            .unplaced
            .entry((service.clone(), why))
            .or_default() += 1;
        let end = self.nodes.get(me).map_or(0, |n| n.span.end_ns);
        self.roots
            .push_back((end.saturating_add(self.limits.grace_ns), me));
    }

    /// Marks span `r` (if still held) as failed.
    pub fn mark_error(&mut self, r: Ref) {
        if let Some(n) = self.nodes.get_mut(r) {
            n.span.error = true;
        }
    }

    /// Hands on every trace whose root ended `grace` before `now_ns`, and
    /// forgets what can no longer be joined.
    pub fn finish(&mut self, now_ns: u64, mut out: impl FnMut(Trace)) {
        // Calls that waited for their request in vain start their own.
        while let Some(&(at, call)) = self.waits.front() {
            if at > now_ns {
                break;
            }
            self.waits.pop_front();
            let Some(node) = self.nodes.get(call) else {
                continue;
            };
            if node.parent.is_some() {
                continue;
            }
            let service = node.span.service.clone();
            if let Some(waiting) = self.nesting.get_mut(&service)
                && let Some(i) = waiting.iter().position(|&c| c == call)
            {
                waiting.swap_remove(i);
                if waiting.is_empty() {
                    self.nesting.remove(&service);
                }
                self.unplace(&service, call, Unplaced::Timeout);
            }
        }
        while let Some(&(at, root)) = self.roots.front() {
            if at > now_ns {
                break;
            }
            self.roots.pop_front();
            // Gone with its trace, or a child now.
            if self.nodes.get(root).is_some_and(|n| n.parent.is_none()) {
                out(self.take_trace(root));
            }
        }
        let horizon = now_ns.saturating_sub(self.limits.grace_ns.saturating_mul(2));
        self.servers.expire(horizon);
        self.calls.expire(horizon);
        let oldest = now_ns.saturating_sub(self.limits.max_wait_ns);
        self.open_calls.retain(|_, &mut start| start >= oldest);
        self.requests.retain(|_, r| {
            while r.spans.front().is_some_and(|&(_, e)| e < oldest) {
                r.spans.pop_front();
            }
            r.forgotten_end >= oldest || !r.spans.is_empty()
        });
    }

    /// Removes root `root` and its descendants, root first.
    fn take_trace(&mut self, root: Ref) -> Trace {
        let mut spans = Vec::new();
        let mut stack = vec![root];
        while let Some(next) = stack.pop() {
            let Some(node) = self.nodes.remove(next) else {
                continue;
            };
            stack.extend(node.children.iter().rev());
            spans.push(Placed {
                span: node.span,
                parent: node.parent.map(|p| p.id),
                join: node.join,
            });
        }
        whole(spans, new_trace_id)
    }
}

impl Requests {
    fn add(&mut self, request: (u64, u64)) {
        if self.spans.len() >= MAX_RECENT_REQUESTS
            && let Some((_, e)) = self.spans.pop_front()
        {
            self.forgotten_end = self.forgotten_end.max(e);
        }
        self.spans.push_back(request);
    }
}

/// A trace of `spans`, root first: the caller's trace id and parent when
/// the root's request named them (joined by `traceparent`), else the id
/// `new_id` makes.
fn whole(mut spans: Vec<Placed>, new_id: impl FnOnce() -> [u8; 16]) -> Trace {
    let remote = spans.first().and_then(|p| p.span.remote);
    let trace_id = remote.map_or_else(new_id, |r| r.trace_id);
    if let Some(root) = spans.first_mut()
        && let Some(remote) = remote
    {
        root.parent = Some(u64::from_be_bytes(remote.parent_id));
        root.join = Join::Traceparent;
    }
    Trace { trace_id, spans }
}

/// A random trace id.
pub fn new_trace_id() -> [u8; 16] {
    let mut t = [0u8; 16];
    t[..8].copy_from_slice(&super::random_id().to_be_bytes());
    t[8..].copy_from_slice(&super::random_id().to_be_bytes());
    t
}
