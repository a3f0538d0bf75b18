//! Joining spans into traces, in bounded memory, in the pipeline's
//! thread. Evidence, strongest first:
//!
//! 1. `traceparent`: a server span whose request named its caller's span
//!    takes that trace id and parent.
//! 2. The connection: a monitored client's HTTP call and a monitored
//!    server's request whose first bytes carry the same TCP sequence number
//!    to the same server port are one exchange seen at both sockets; the
//!    server span becomes the call's child.
//! 3. Nesting: a call made while exactly one server request of its service
//!    was in flight, ending inside it, with no other request of the service
//!    overlapping it, is that request's child, unless the call was sent by
//!    another thread than the one that sent the request's response (both
//!    known: a background thread's call, such as an exporter's). Anything
//!    else (several requests in flight, none, a call that outlives every
//!    request, another thread) is counted as unplaced and starts a trace of
//!    its own: never guessed.
//!
//! A span with no local parent is a root; its trace is handed on `grace`
//! after it ends (children end before their parents, and the pipeline
//! sees both ends of an exchange within a ring drain of each other).

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, VecDeque},
    sync::Arc,
};

use rustc_hash::FxHashMap;

use super::{Join, Kind, Placed, Span, Trace};

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
/// Clock slack between the two ends of one exchange.
const SLACK_NS: u64 = 1_000_000;

struct Node {
    span: Span,
    parent: Option<u64>,
    join: Join,
    children: Vec<u64>,
}

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

pub struct Assembler {
    limits: Limits,
    nodes: FxHashMap<u64, Node>,
    /// Server spans whose client call was not seen yet, by (port, seq).
    servers_by_wire: FxHashMap<(u16, u32), (u64, u64)>,
    /// Client calls whose server span was not seen yet.
    calls_by_wire: FxHashMap<(u16, u32), (u64, u64)>,
    /// Calls waiting for the request they were made in, per service.
    nesting: FxHashMap<Arc<str>, Vec<u64>>,
    requests: FxHashMap<Arc<str>, Requests>,
    /// (when, span): a root to hand on, or a call that stops waiting.
    due: BinaryHeap<Reverse<(u64, u64)>>,
    losses: Losses,
}

impl Assembler {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            nodes: FxHashMap::default(),
            servers_by_wire: FxHashMap::default(),
            calls_by_wire: FxHashMap::default(),
            nesting: FxHashMap::default(),
            requests: FxHashMap::default(),
            due: BinaryHeap::new(),
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

    /// Holds `span`; false (counted) when full.
    fn hold(&mut self, span: Span) -> bool {
        if self.nodes.len() >= self.limits.max_pending {
            self.losses.full += 1;
            return false;
        }
        let id = span.id;
        self.nodes.insert(
            id,
            Node {
                span,
                parent: None,
                join: Join::Root,
                children: Vec::new(),
            },
        );
        true
    }

    fn adopt(&mut self, parent: u64, child: u64, join: Join) {
        if let Some(c) = self.nodes.get_mut(&child) {
            c.parent = Some(parent);
            c.join = join;
        }
        if let Some(p) = self.nodes.get_mut(&parent) {
            p.children.push(child);
        }
    }

    /// A server request ended.
    pub fn server(&mut self, span: Span) {
        let (id, service) = (span.id, span.service.clone());
        let request = (span.start_ns, span.end_ns, span.thread);
        let (start, end, _) = request;
        let (remote, wire) = (span.remote.is_some(), span.wire);
        if !self.hold(span) {
            return;
        }
        if remote {
            if let Some(n) = self.nodes.get_mut(&id) {
                n.join = Join::Traceparent;
            }
        } else if let Some(wire) = wire {
            match self.calls_by_wire.remove(&wire) {
                Some((call, _)) if self.nodes.contains_key(&call) => {
                    self.adopt(call, id, Join::Connection)
                }
                _ => {
                    self.servers_by_wire.insert(wire, (id, end));
                }
            }
        }
        self.claim_calls(&service, id, request);
        let requests = self.requests.entry(service).or_default();
        if requests.spans.len() >= MAX_RECENT_REQUESTS
            && let Some((_, e)) = requests.spans.pop_front()
        {
            requests.forgotten_end = requests.forgotten_end.max(e);
        }
        requests.spans.push_back((start, end));
        self.due
            .push(Reverse((end.saturating_add(self.limits.grace_ns), id)));
    }

    /// The calls of `service` waiting for a request that end inside
    /// request `id` ([start, end], its response sent by `thread`) are its
    /// children, unless another request overlapped them or another thread
    /// sent them.
    fn claim_calls(&mut self, service: &Arc<str>, id: u64, (start, end, thread): (u64, u64, u32)) {
        let Some(waiting) = self.nesting.get_mut(service) else {
            return;
        };
        let mut placed = Vec::new();
        let mut refused = Vec::new();
        waiting.retain(|&call| {
            let Some(c) = self.nodes.get(&call) else {
                return false;
            };
            if c.span.end_ns > end.saturating_add(SLACK_NS) {
                // Not this request's: it outlived it.
                return true;
            }
            let (c_start, c_end) = (c.span.start_ns, c.span.end_ns);
            let inside = c_start.saturating_add(SLACK_NS) >= start;
            let overlapped = self.requests.get(service).is_some_and(|r| {
                c_start < r.forgotten_end || r.spans.iter().any(|&(s, e)| s < c_end && e > c_start)
            });
            let other_thread = c.span.thread != 0 && thread != 0 && c.span.thread != thread;
            if !inside || overlapped {
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
            self.adopt(id, call, Join::Nesting);
        }
        for (call, why) in refused {
            self.unplace(service, call, why);
        }
    }

    /// A monitored client's call ended, when `in_flight` server requests
    /// of its service were in flight.
    pub fn call(&mut self, span: Span, in_flight: u64) {
        let (id, service, end, wire) = (span.id, span.service.clone(), span.end_ns, span.wire);
        debug_assert_eq!(span.kind, Kind::Client);
        if !self.hold(span) {
            return;
        }
        if let Some(wire) = wire {
            match self.servers_by_wire.remove(&wire) {
                Some((server, _)) if self.nodes.contains_key(&server) => {
                    self.adopt(id, server, Join::Connection)
                }
                _ => {
                    self.calls_by_wire.insert(wire, (id, end));
                }
            }
        }
        match in_flight {
            0 => self.unplace(&service, id, Unplaced::NoRequest),
            1 => {
                self.nesting.entry(service).or_default().push(id);
                self.due
                    .push(Reverse((end.saturating_add(self.limits.max_wait_ns), id)));
            }
            _ => self.unplace(&service, id, Unplaced::Ambiguous),
        }
    }

    /// Call `id` starts a trace of its own.
    fn unplace(&mut self, service: &Arc<str>, id: u64, why: Unplaced) {
        *self
            .losses
            .unplaced
            .entry((service.clone(), why))
            .or_default() += 1;
        let end = self.nodes.get(&id).map_or(0, |n| n.span.end_ns);
        self.due
            .push(Reverse((end.saturating_add(self.limits.grace_ns), id)));
    }

    /// Marks span `id` (still held) as failed.
    pub fn mark_error(&mut self, id: u64) {
        if let Some(n) = self.nodes.get_mut(&id) {
            n.span.error = true;
        }
    }

    /// Hands on every trace whose root ended `grace` before `now_ns`, and
    /// forgets what can no longer be joined.
    pub fn finish(&mut self, now_ns: u64, mut out: impl FnMut(Trace)) {
        while let Some(&Reverse((at, id))) = self.due.peek() {
            if at > now_ns {
                break;
            }
            self.due.pop();
            let Some(node) = self.nodes.get(&id) else {
                continue;
            };
            if node.parent.is_some() {
                continue;
            }
            let service = node.span.service.clone();
            if let Some(waiting) = self.nesting.get_mut(&service)
                && let Some(i) = waiting.iter().position(|&c| c == id)
            {
                waiting.swap_remove(i);
                if waiting.is_empty() {
                    self.nesting.remove(&service);
                }
                self.unplace(&service, id, Unplaced::Timeout);
                continue;
            }
            out(self.take_trace(id));
        }
        let horizon = now_ns.saturating_sub(self.limits.grace_ns.saturating_mul(2));
        self.servers_by_wire
            .retain(|_, &mut (_, end)| end >= horizon);
        self.calls_by_wire.retain(|_, &mut (_, end)| end >= horizon);
        let oldest = now_ns.saturating_sub(self.limits.max_wait_ns);
        self.requests.retain(|_, r| {
            while r.spans.front().is_some_and(|&(_, e)| e < oldest) {
                r.spans.pop_front();
            }
            r.forgotten_end >= oldest || !r.spans.is_empty()
        });
    }

    /// Removes root `id` and its descendants, root first.
    fn take_trace(&mut self, id: u64) -> Trace {
        let mut spans = Vec::new();
        let mut stack = vec![id];
        while let Some(next) = stack.pop() {
            let Some(node) = self.nodes.remove(&next) else {
                continue;
            };
            stack.extend(node.children.iter().rev());
            spans.push(Placed {
                span: node.span,
                parent: node.parent,
                join: node.join,
            });
        }
        let trace_id = match spans.first().and_then(|p| p.span.remote) {
            Some(remote) => remote.trace_id,
            None => {
                let mut t = [0u8; 16];
                t[..8].copy_from_slice(&super::random_id().to_be_bytes());
                t[8..].copy_from_slice(&super::random_id().to_be_bytes());
                t
            }
        };
        if let Some(root) = spans.first_mut()
            && let Some(remote) = root.span.remote
        {
            root.parent = Some(u64::from_be_bytes(remote.parent_id));
        }
        Trace { trace_id, spans }
    }
}
