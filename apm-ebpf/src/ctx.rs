//! Direct reads of syscall tracepoint records.
//!
//! `TracePointContext::read_at` copies through bpf_probe_read_kernel, a
//! helper call. The record is the program's own context, which the verifier
//! lets tracepoint programs load from directly (aligned, at offset 8 or
//! more), so the syscall hooks, which run for every process on the host,
//! use plain loads.

use aya_ebpf::{EbpfContext as _, programs::TracePointContext};

/// The 8-byte field at `offset` (a multiple of 8, at least 8) of the
/// tracepoint record.
#[inline(always)]
pub fn field_u64(ctx: &TracePointContext, offset: usize) -> u64 {
    // SAFETY: the context points at the tracepoint's record; every caller
    // passes an 8-aligned offset of an 8-byte field listed in that
    // tracepoint's format file, which the verifier checks on load.
    unsafe { core::ptr::read(ctx.as_ptr().cast::<u8>().add(offset).cast::<u64>()) }
}
