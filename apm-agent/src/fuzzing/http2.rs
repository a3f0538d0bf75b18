//! HTTP/2 through `Streams`, from arbitrary bytes: the client's preface,
//! then pieces of either direction, cut anywhere, from the input. Frames
//! and header blocks are whatever the bytes say (HPACK with Huffman
//! strings, size updates, CONTINUATION, padding, resets). Whatever they
//! are: no panic, no path with a query string, and after the close every
//! HTTP request announced was completed or counted unpaired.

use std::sync::Arc;

use apm_common::events::EventKind;

use crate::{
    protocols::{
        http2::{frames::PREFACE, hpack::Decoder, read_block},
        resp::commands::Command,
        routes::Route,
        sql::Statement,
    },
    streams::{
        Streams,
        http2::{RpcCall, RpcSink},
        pairing::{Completed, Origin, Sink, Unpaired},
        postgres::{Outcome, StatementSink},
        resp::{CacheResult, CommandSink, Peer},
        sql::System,
    },
    telemetry::synthetic,
};

#[derive(Default)]
struct Count {
    announced: u64,
    ended: u64,
}

impl Sink for Count {
    fn route(&mut self, _: Origin, path: &str) -> Route {
        assert!(!path.contains(['?', '#']), "{path:?}");
        Route {
            template: Arc::from("/"),
            overflow: false,
        }
    }
    fn request(&mut self, _: Origin, _: u16) {
        self.announced += 1;
    }
    fn completed(&mut self, _: Completed) {
        self.ended += 1;
    }
    fn unpaired(&mut self, _: Origin, _: u16, _: Unpaired) {
        self.ended += 1;
    }
    fn resync(&mut self, _: Origin, _: u16, _: Unpaired) {}
}

impl RpcSink for Count {
    fn rpc_method(&mut self, _: Origin, path: &str) -> Arc<str> {
        assert!(!path.contains(['?', '#']), "{path:?}");
        Arc::from("/")
    }
    fn rpc_completed(&mut self, call: RpcCall) {
        assert!(!call.method.contains('?'));
    }
    fn rpc_unpaired(&mut self, _: Origin, _: u16, _: Unpaired) {}
}

impl CommandSink for Count {
    fn completed(&mut self, _: &Peer, _: Command, _: u64, _: u64, _: u32) {}
    fn result(&mut self, _: &Peer, _: Command, _: CacheResult) {}
    fn unpaired(&mut self, _: &Peer, _: Unpaired) {}
}

impl StatementSink for Count {
    fn statement(&mut self, _: &Peer, _: System, _: &Arc<Statement>, _: Outcome, _: (u64, u64)) {}
    fn statement_unpaired(&mut self, _: &Peer, _: System, _: Unpaired) {}
}

pub fn http2(data: &[u8]) {
    // The header block decoder alone, joined mid-way or not.
    let partial = data.first().is_some_and(|b| b & 1 != 0);
    let mut decoder = Decoder::new(partial);
    if let Ok(h) = read_block(&mut decoder, data) {
        assert!(h.path.is_none_or(|p| !p.contains(['?', '#'])));
    }

    let (mut streams, mut sink) = (Streams::new(4), Count::default());
    let mut ts = 1;
    let mut feed = |streams: &mut Streams, sink: &mut Count, to_server: bool, bytes: &[u8]| {
        let kind = if to_server {
            EventKind::Read
        } else {
            EventKind::Write
        };
        ts += 1_000;
        let record = synthetic::record(kind, ts, 7, 4, 8080, bytes);
        let _ = streams.handle_record(&record, sink);
    };
    feed(&mut streams, &mut sink, true, PREFACE);
    let mut rest = data;
    while let Some((&head, tail)) = rest.split_first() {
        // Each piece: a byte (direction, length up to 127), then bytes.
        let n = usize::from(head & 0x7f).min(tail.len());
        let (piece, after) = tail.split_at(n);
        feed(&mut streams, &mut sink, head & 0x80 == 0, piece);
        rest = after;
    }
    let close = synthetic::record(EventKind::Close, ts + 1_000, 7, 4, 8080, b"");
    let _ = streams.handle_record(&close, &mut sink);
    streams.sweep(u64::MAX / 2, 0, &mut sink);
    assert_eq!(streams.connections(), 0);
    assert_eq!(
        sink.announced, sink.ended,
        "every HTTP/2 request announced ends once"
    );
}
