//! Writing records into the EVENTS ring buffer.

use aya_ebpf::{
    bindings::{BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, BPF_RB_PROD_POS},
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, generated::bpf_probe_read_user},
};

use apm_common::{
    DropReason,
    events::{ConnectEvent, DATA_CAP, DataEvent, EventHeader, EventKind, TAIL_CAP, record_flags},
};

use crate::maps::{CONFIG, EVENTS, count_drop};

/// Submit flags for a record of `size` bytes just reserved: wake the
/// reader only when it took the producer position across a multiple of
/// the wake step (`CONFIG.wake_shift`: WAKE_STEP_BYTES, or a quarter of a
/// smaller ring). A wakeup is an inter-processor interrupt raised inside
/// the traced task's syscall or send; under load the reader drains on its
/// own short timer, so this only ends its rest when a burst starts, or
/// its short wait when a small ring fills fast. Only the producer position
/// is read (a line every producer writes anyway); asking how much is
/// queued would read the consumer's line on every record. A crossing
/// hidden by another CPU's record in between only delays the drain to the
/// next step or timer.
#[inline(always)]
pub fn wakeup_flags(size: usize) -> u64 {
    // The position already counts this record: it crossed if the
    // position is less than the record past a multiple of the step.
    crossing(size, |end, step, record| end & (step - 1) < record)
}

/// [`wakeup_flags`] for `output`, asked before it reserves: the record
/// will cross if it does not fit before the next multiple of the step.
#[inline(always)]
pub fn wakeup_flags_ahead(size: usize) -> u64 {
    crossing(size, |start, step, record| {
        (start & (step - 1)) + record >= step
    })
}

#[inline(always)]
fn crossing(size: usize, crosses: impl Fn(u64, u64, u64) -> bool) -> u64 {
    let shift = CONFIG.get(0).map_or(0, |c| c.wake_shift);
    if shift == 0 || shift >= 32 {
        return u64::from(BPF_RB_NO_WAKEUP);
    }
    let pos = EVENTS.query(u64::from(BPF_RB_PROD_POS));
    // The ring's 8-byte record header, then the record rounded up to 8.
    let record = (size as u64 + 8 + 7) & !7;
    if crosses(pos, 1u64 << shift, record) {
        u64::from(BPF_RB_FORCE_WAKEUP)
    } else {
        u64::from(BPF_RB_NO_WAKEUP)
    }
}

/// What a record's connection is known by.
#[derive(Clone, Copy)]
pub struct Key {
    conn: u64,
    flags: u8,
}

impl Key {
    /// A descriptor of the current process.
    #[inline(always)]
    pub fn fd(fd: u32) -> Self {
        Self {
            conn: u64::from(fd),
            flags: 0,
        }
    }

    /// A socket, by its cookie.
    #[inline(always)]
    pub fn socket(cookie: u64) -> Self {
        Self {
            conn: cookie,
            flags: record_flags::SOCKET,
        }
    }

    /// A TLS object of the current process, not yet tied to its socket.
    #[inline(always)]
    pub fn object(ssl: u64) -> Self {
        Self {
            conn: ssl,
            flags: record_flags::OBJECT,
        }
    }
}

#[inline(always)]
fn header(kind: EventKind, key: Key, port: u16, ret: i64) -> EventHeader {
    header_of(current_tgid(), kind, key, port, ret)
}

#[inline(always)]
fn current_tgid() -> u32 {
    (bpf_get_current_pid_tgid() >> 32) as u32
}

#[inline(always)]
fn header_of(tgid: u32, kind: EventKind, key: Key, port: u16, ret: i64) -> EventHeader {
    EventHeader {
        kind: kind as u32,
        captured: 0,
        // SAFETY: plain helper call without arguments.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        tgid,
        port,
        tail_len: 0,
        flags: key.flags,
        conn: key.conn,
        ret,
        tail: [0; TAIL_CAP],
    }
}

/// A record without data (accept, close, sendfile).
#[inline(always)]
pub fn emit_header(kind: EventKind, key: Key, port: u16, ret: i64) {
    emit_header_of(current_tgid(), kind, key, port, ret);
}

/// [`emit_header`] in the name of process `tgid`.
#[inline(always)]
pub fn emit_header_of(tgid: u32, kind: EventKind, key: Key, port: u16, ret: i64) {
    let Some(mut entry) = EVENTS.reserve::<EventHeader>(0) else {
        count_drop(DropReason::RingbufFull);
        return;
    };
    entry.write(header_of(tgid, kind, key, port, ret));
    entry.submit(wakeup_flags(core::mem::size_of::<EventHeader>()));
}

/// A read or write record of `ret` bytes moved through the one user
/// buffer `buf`: its first DATA_CAP bytes, and a write's last TAIL_CAP.
#[inline(always)]
pub fn emit_buf(kind: EventKind, key: Key, port: u16, ret: i64, buf: u64) {
    let tail = if kind == EventKind::Write && ret as u64 > DATA_CAP as u64 {
        buf + ret as u64 - TAIL_CAP as u64
    } else {
        0
    };
    emit_data(kind, key, port, ret, buf, ret as u64, tail);
}

/// A read or write record: `ret` bytes moved through `buf` (a user pointer
/// to at least `len` valid bytes); the first DATA_CAP of them are copied.
/// `tail` is the user address of the last TAIL_CAP bytes of the whole
/// transfer when it is longer than DATA_CAP (0: none).
#[inline(always)]
pub fn emit_data(kind: EventKind, key: Key, port: u16, ret: i64, buf: u64, len: u64, tail: u64) {
    let Some(mut entry) = EVENTS.reserve::<DataEvent>(0) else {
        count_drop(DropReason::RingbufFull);
        return;
    };
    let ev = entry.as_mut_ptr();
    let mut h = header(kind, key, port, ret);
    let want = core::cmp::min(len, ret as u64);
    let n = core::cmp::min(want, DATA_CAP as u64) as u32;
    // SAFETY: `ev` points at a reserved record of size_of::<DataEvent>();
    // `n <= DATA_CAP` fits `data`; bpf_probe_read_user faults safely on a
    // bad user pointer and then we record nothing as captured.
    let copied = unsafe {
        bpf_probe_read_user(
            core::ptr::addr_of_mut!((*ev).data).cast(),
            n,
            buf as *const _,
        )
    };
    if copied == 0 {
        h.captured = n;
    }
    if tail != 0 {
        let mut bytes = [0u8; TAIL_CAP];
        // SAFETY: as above, into a stack array of exactly TAIL_CAP bytes.
        let ok = unsafe {
            bpf_probe_read_user(bytes.as_mut_ptr().cast(), TAIL_CAP as u32, tail as *const _)
        };
        if ok == 0 {
            h.tail = bytes;
            h.tail_len = TAIL_CAP as u8;
        }
    }
    // SAFETY: writing the header part of the reserved record.
    unsafe { core::ptr::addr_of_mut!((*ev).header).write(h) };
    entry.submit(wakeup_flags(core::mem::size_of::<DataEvent>()));
}

/// A connect record, or its count as lost.
#[inline(always)]
pub fn emit_connect(event: ConnectEvent) {
    let flags = wakeup_flags_ahead(core::mem::size_of::<ConnectEvent>());
    if EVENTS.output::<ConnectEvent>(event, flags).is_err() {
        count_drop(DropReason::RingbufFull);
    }
}
