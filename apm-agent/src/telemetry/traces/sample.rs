//! The tail decision, made once a trace's root has ended: keep every trace
//! with an error or a span slower than `--trace-slow`; of the rest, the
//! share `--trace-sample-ratio` picks by trace id (as OpenTelemetry's
//! TraceIdRatioBased does, so agents on other hosts pick the same traces)
//! and those whose caller sampled them, within `--trace-max-spans-per-second`.

use super::Trace;

#[derive(Clone, Copy, Debug)]
pub struct SampleConfig {
    pub slow_ns: u64,
    pub ratio: f64,
    pub max_spans_per_second: u32,
}

/// Why a trace was kept or dropped (`decision` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Error,
    Slow,
    Sampled,
    ParentSampled,
    SampledOut,
    RateLimited,
}

impl Decision {
    pub const ALL: [Decision; 6] = [
        Self::Error,
        Self::Slow,
        Self::Sampled,
        Self::ParentSampled,
        Self::SampledOut,
        Self::RateLimited,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Slow => "slow",
            Self::Sampled => "sampled",
            Self::ParentSampled => "parent_sampled",
            Self::SampledOut => "sampled_out",
            Self::RateLimited => "rate_limited",
        }
    }

    /// Its place in [`Decision::ALL`].
    pub const fn index(self) -> usize {
        self as usize
    }

    pub const fn kept(self) -> bool {
        matches!(
            self,
            Self::Error | Self::Slow | Self::Sampled | Self::ParentSampled
        )
    }
}

/// What the decision reads of a trace.
pub struct Summary {
    pub error: bool,
    pub slowest_ns: u64,
    /// The caller's traceparent said sampled.
    pub parent_sampled: bool,
    pub trace_id: [u8; 16],
    pub spans: usize,
}

impl Summary {
    pub fn of(trace: &Trace) -> Self {
        Self {
            error: trace.error(),
            slowest_ns: trace.slowest_ns(),
            parent_sampled: trace.root().remote.is_some_and(|r| r.sampled),
            trace_id: trace.trace_id,
            spans: trace.spans.len(),
        }
    }
}

pub struct Sampler {
    config: SampleConfig,
    /// Spans the rate still allows (a token bucket of one second).
    tokens: f64,
    last_ns: u64,
}

impl Sampler {
    pub fn new(config: SampleConfig) -> Self {
        Self {
            config,
            tokens: f64::from(config.max_spans_per_second),
            last_ns: 0,
        }
    }

    pub fn decide(&mut self, trace: &Trace, now_ns: u64) -> Decision {
        self.decide_on(&Summary::of(trace), now_ns)
    }

    /// The decision on a trace known by its summary.
    pub fn decide_on(&mut self, trace: &Summary, now_ns: u64) -> Decision {
        if trace.error {
            return Decision::Error;
        }
        if trace.slowest_ns >= self.config.slow_ns {
            return Decision::Slow;
        }
        let parent = trace.parent_sampled;
        if !parent && !by_ratio(&trace.trace_id, self.config.ratio) {
            return Decision::SampledOut;
        }
        let max = f64::from(self.config.max_spans_per_second);
        let elapsed = now_ns.saturating_sub(self.last_ns) as f64 / 1e9;
        self.last_ns = now_ns;
        self.tokens = (self.tokens + elapsed * max).min(max);
        let cost = trace.spans as f64;
        if self.tokens < cost {
            return Decision::RateLimited;
        }
        self.tokens -= cost;
        if parent {
            Decision::ParentSampled
        } else {
            Decision::Sampled
        }
    }
}

/// Whether the trace id's low 8 bytes fall in the `ratio` share.
fn by_ratio(trace_id: &[u8; 16], ratio: f64) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    if ratio <= 0.0 {
        return false;
    }
    let mut low = [0u8; 8];
    low.copy_from_slice(&trace_id[8..]);
    // The comparison of OpenTelemetry's TraceIdRatioBased sampler.
    (u64::from_be_bytes(low) >> 1) < (ratio * (1u64 << 63) as f64) as u64
}
