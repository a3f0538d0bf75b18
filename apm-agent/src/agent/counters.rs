//! The kernel's cumulative counters (per port, per process, drops, ring
//! losses, verdicts) turned into Prometheus increments.

use apm_common::{DropReason, PidCounters, Verdict};

use super::Agent;
use crate::services::directory::{UNKNOWN_SERVICE, ownerless_name};
pub(super) use crate::telemetry::saturation::tcp::increment;

impl Agent {
    /// Turn the kernel's cumulative counters into metric increments.
    pub fn collect(&mut self) {
        self.collect_ports(false);
    }

    /// [`Self::collect`]; `named_only`: ports not named yet are left for
    /// the next collection.
    pub(super) fn collect_ports(&mut self, named_only: bool) {
        let Some(kernel) = self.kernel.as_ref() else {
            return;
        };
        let mut ports = kernel.port_counters();
        if named_only {
            ports.retain(|p, _| self.port_names.contains_key(p) || self.nameless.contains(p));
        }
        let pids = kernel.pid_counters();
        let drops: Vec<u64> = DropReason::ALL.iter().map(|&d| kernel.drops(d)).collect();
        let verdicts = Verdict::ALL.map(|v| kernel.verdicts(v));

        for (port, now) in ports {
            let last = self.last_ports.insert(port, now).unwrap_or_default();
            let ownerless;
            let name = match self.port_names.get(&port) {
                Some(name) => name.as_str(),
                None => {
                    ownerless = ownerless_name(port);
                    ownerless.as_str()
                }
            };
            let port_label = port.to_string();
            let labels = [name, &port_label];
            let m = &self.metrics;
            m.saturation.tcp.served(name, &port_label, &last, &now);
            m.conns_accepted
                .with_label_values(&labels)
                .inc_by(increment(last.accepted, now.accepted));
            m.conns_closed
                .with_label_values(&labels)
                .inc_by(increment(last.closed, now.closed));
            let active = now.accepted.saturating_sub(now.closed);
            m.conns_active
                .with_label_values(&labels)
                .set(i64::try_from(active).unwrap_or(i64::MAX));
            if active > 0 || now.accepted != last.accepted {
                self.port_seen.insert(port, std::time::Instant::now());
            }
        }
        for (pid, now) in pids {
            self.account_pid(pid, now);
        }
        self.collect_pools();
        let lost = DropReason::ALL
            .iter()
            .position(|d| *d == DropReason::RingbufFull)
            .and_then(|i| drops.get(i).copied())
            .unwrap_or(0);
        self.record_losses(lost);
        for (i, (reason, now)) in DropReason::ALL.iter().zip(drops).enumerate() {
            let inc = increment(self.last_drops[i], now);
            self.last_drops[i] = now;
            self.metrics
                .ebpf_drops
                .with_label_values(&[reason.reason()])
                .inc_by(inc);
        }
        for ((verdict, now), last) in Verdict::ALL
            .iter()
            .zip(verdicts)
            .zip(&mut self.last_verdicts)
        {
            self.metrics.count_verdict(
                *verdict,
                increment(last.0, now.0),
                increment(last.1, now.1),
            );
            *last = now;
        }
    }

    pub(super) fn account_pid(&mut self, pid: u32, now: PidCounters) {
        let last = self.last_pids.insert(pid, now).unwrap_or_default();
        let name = self
            .published
            .get(&pid)
            .map_or(UNKNOWN_SERVICE, |(name, _)| name.as_str());
        self.metrics
            .accepted_sockets
            .with_label_values(&[name])
            .inc_by(increment(last.accepts, now.accepts));
        self.metrics
            .accepted_sockets_closed
            .with_label_values(&[name])
            .inc_by(increment(last.closes, now.closes));
    }

    fn record_losses(&mut self, total: u64) {
        let now = std::time::Instant::now();
        self.ringbuf_losses.push_back((now, total));
        while self
            .ringbuf_losses
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > std::time::Duration::from_secs(60))
            && self.ringbuf_losses.len() > 1
        {
            self.ringbuf_losses.pop_front();
        }
        self.lost_recently.store(
            self.lost_last_minute(),
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// Ring-buffer records lost during about the last minute.
    pub fn lost_last_minute(&self) -> u64 {
        match (self.ringbuf_losses.front(), self.ringbuf_losses.back()) {
            (Some((_, first)), Some((_, last))) => last.saturating_sub(*first),
            _ => 0,
        }
    }
}
