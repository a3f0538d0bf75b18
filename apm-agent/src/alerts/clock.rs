//! Time for alerts. `for`, `keep_firing_for`, cooldowns and repeats are
//! measured on a monotonic clock, which never jumps when the wall clock is
//! set; the wall clock only stamps what is shown (/alerts) and sent
//! (`startsAt`, `endsAt`). The evaluation task reads [`SystemClock`];
//! tests drive a [`FakeClock`].

use std::{
    sync::Mutex,
    time::{Duration, SystemTime},
};

/// One reading of both clocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    /// Monotonic time since an arbitrary origin: for every interval.
    pub mono: Duration,
    /// Wall-clock time: for timestamps only.
    pub wall: SystemTime,
}

pub trait Clock: Send + Sync {
    fn now(&self) -> Now;
}

/// CLOCK_MONOTONIC (the request windows' clock too) and the system time.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Now {
        Now {
            mono: Duration::from_nanos(crate::telemetry::pipeline::monotonic_ns()),
            wall: SystemTime::now(),
        }
    }
}

/// A clock that moves only when told: both clocks advance together, and
/// the wall clock can also be set on its own, as an operator or NTP would.
pub struct FakeClock(Mutex<Now>);

impl FakeClock {
    /// Monotonic zero, at a wall time in 2027.
    pub fn new() -> Self {
        Self(Mutex::new(Now {
            mono: Duration::ZERO,
            wall: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        }))
    }

    pub fn advance(&self, by: Duration) {
        let mut now = self.0.lock().unwrap_or_else(|p| p.into_inner());
        now.mono += by;
        now.wall += by;
    }

    /// Sets the wall clock `by` back (or forward, with `forward`); the
    /// monotonic clock does not move.
    pub fn step_wall(&self, by: Duration, forward: bool) {
        let mut now = self.0.lock().unwrap_or_else(|p| p.into_inner());
        now.wall = if forward {
            now.wall + by
        } else {
            now.wall - by
        };
    }
}

impl Default for FakeClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Now {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// RFC 3339 in UTC, as Alertmanager's API wants.
pub fn format_time(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    let days = secs.as_secs() / 86_400;
    let rem = secs.as_secs() % 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        secs.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day) (Howard Hinnant's
/// algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

pub(super) mod rfc3339 {
    use std::time::SystemTime;

    pub fn serialize<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_time(*t))
    }
}

pub(super) mod rfc3339_opt {
    use std::time::SystemTime;

    pub fn serialize<S: serde::Serializer>(
        t: &Option<SystemTime>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_str(&super::format_time(*t)),
            None => s.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(
            format_time(SystemTime::UNIX_EPOCH),
            "1970-01-01T00:00:00.000Z"
        );
        assert_eq!(
            format_time(SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_996_800_250)),
            "2026-11-30T00:00:00.250Z"
        );
    }

    #[test]
    fn the_fake_wall_clock_steps_without_the_monotonic_one() {
        let c = FakeClock::new();
        let t0 = c.now();
        c.advance(Duration::from_secs(5));
        c.step_wall(Duration::from_secs(3600), false);
        let t1 = c.now();
        assert_eq!(t1.mono - t0.mono, Duration::from_secs(5));
        assert!(t1.wall < t0.wall);
    }
}
