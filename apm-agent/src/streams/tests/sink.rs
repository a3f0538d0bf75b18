//! The sink the streams tests read: what every protocol's pairing
//! reported, in order.

use std::sync::Arc;

use crate::{
    protocols::{resp::commands::Command, routes::Route, sql::Statement},
    streams::{
        http2::{RpcCall, RpcSink},
        pairing::{Completed, Origin, Sink, Unpaired},
        postgres::{Outcome, StatementSink},
        resp::{CacheResult, CommandSink, Peer},
        sql::System,
    },
};

#[derive(Default)]
pub(in crate::streams) struct Both {
    pub(in crate::streams) http: Vec<(String, u16)>,
    pub(in crate::streams) origins: Vec<Origin>,
    pub(in crate::streams) methods: Vec<&'static str>,
    pub(in crate::streams) redis: Vec<(&'static str, Peer)>,
    pub(in crate::streams) unpaired: Vec<Unpaired>,
    pub(in crate::streams) resyncs: Vec<Unpaired>,
    pub(in crate::streams) sql: Vec<String>,
    pub(in crate::streams) rpc: Vec<(String, u16)>,
}

impl Sink for Both {
    fn route(&mut self, _: Origin, path: &str) -> Route {
        Route {
            template: path.into(),
            overflow: false,
        }
    }
    fn request(&mut self, _: Origin, _: u16) {}
    fn completed(&mut self, done: Completed) {
        self.http.push((done.route.to_string(), done.status));
        self.origins.push(done.origin);
        self.methods.push(done.method.as_str());
    }
    fn unpaired(&mut self, _: Origin, _: u16, reason: Unpaired) {
        self.unpaired.push(reason);
    }
    fn resync(&mut self, _: Origin, _: u16, reason: Unpaired) {
        self.resyncs.push(reason);
    }
}

impl RpcSink for Both {
    fn rpc_method(&mut self, _: Origin, path: &str) -> Arc<str> {
        path.into()
    }
    fn rpc_completed(&mut self, call: RpcCall) {
        self.rpc.push((call.method.to_string(), call.code));
        self.origins.push(call.origin);
    }
    fn rpc_unpaired(&mut self, _: Origin, _: u16, reason: Unpaired) {
        self.unpaired.push(reason);
    }
}

impl CommandSink for Both {
    fn completed(&mut self, peer: &Peer, cmd: Command, _: u64, _: u64, _: u32) {
        self.redis.push((cmd.name, *peer));
    }
    fn result(&mut self, _: &Peer, _: Command, _: CacheResult) {}
    fn unpaired(&mut self, _: &Peer, reason: Unpaired) {
        self.unpaired.push(reason);
    }
}

impl StatementSink for Both {
    fn statement(&mut self, _: &Peer, _: System, stmt: &Arc<Statement>, _: Outcome, _: (u64, u64)) {
        self.sql.push(stmt.text.clone());
    }
    fn statement_unpaired(&mut self, _: &Peer, _: System, reason: Unpaired) {
        self.unpaired.push(reason);
    }
}
