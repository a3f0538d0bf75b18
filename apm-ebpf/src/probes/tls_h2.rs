//! HTTP/2 over TLS: a monitored server's or client's plaintext, when
//! the client's first write starts with the connection preface, has its
//! frames followed per direction (`h2`), so a write of 16 KiB of frames keeps every frame
//! header and header block and leaves DATA payloads out, where the first
//! `DATA_CAP` bytes of each call would lose the framing. The state is
//! kept per library object (`SSL *`, Go's `*tls.Conn`) in `TLS_H2`,
//! which outlives the object's tie to its socket; a call's "sequence
//! number" is the direction's byte count, calls being in order.

use aya_ebpf::helpers::{bpf_probe_read_user, generated};

use apm_common::{SslKey, TlsCall, events::EventKind};

use super::h2::{self, H2Dir};
use crate::{
    emit::{Key, emit_buf, emit_data},
    maps::TLS_H2,
};

/// The client connection preface's first 16 bytes.
const PREFACE: &[u8; 16] = b"PRI * HTTP/2.0\r\n";

/// A TLS call's plaintext: its user buffer, and its records.
#[derive(Clone, Copy)]
struct Plain {
    buf: u64,
    kind: EventKind,
    key: Key,
    port: u16,
}

impl h2::Bytes for Plain {
    #[inline(always)]
    fn load<const N: usize>(&self, off: u32) -> Option<[u8; N]> {
        // SAFETY: user memory read through bpf_probe_read_user, which
        // faults safely.
        unsafe { bpf_probe_read_user((self.buf + u64::from(off)) as *const [u8; N]) }.ok()
    }

    #[inline(always)]
    fn head(&self, off: u32, k: u32) -> Option<[u8; 4]> {
        let mut b = [0u8; 4];
        // min(k, 4) in [1, 4] as the verifier sees it.
        let n = (core::cmp::min(k.wrapping_sub(1), 3) & 3) + 1;
        // SAFETY: a stack array of 4 bytes and 0 < n <= 4; the helper
        // faults safely on a bad user address.
        let rc = unsafe {
            generated::bpf_probe_read_user(
                b.as_mut_ptr().cast(),
                n,
                (self.buf + u64::from(off)) as *const core::ffi::c_void,
            )
        };
        (rc == 0).then_some(b)
    }
}

impl h2::Source for Plain {
    #[inline(always)]
    fn emit(&self, off: u32, len: u32, copied: u32, _last: bool) {
        let at = self.buf + u64::from(off);
        emit_data(
            self.kind,
            self.key,
            self.port,
            i64::from(len),
            at,
            u64::from(copied),
            0,
        );
    }
}

#[inline(always)]
fn object(tgid: u32, ssl: u64) -> SslKey {
    SslKey { ssl, tgid, _pad: 0 }
}

/// The records of `call` of process `tgid`, which moved `moved` bytes,
/// under `key`: its frames followed when its connection is HTTP/2, else
/// its first `DATA_CAP` bytes.
#[inline(always)]
pub fn emit(tgid: u32, call: &TlsCall, kind: EventKind, key: Key, port: u16, moved: i64) {
    let plain = Plain {
        buf: call.buf,
        kind,
        key,
        port,
    };
    let n = moved as u32;
    let at = object(tgid, call.object);
    let mut dirs = TLS_H2.get_ptr_mut(at);
    let write = usize::from(kind == EventKind::Write);
    // The first 16 bytes, read once: where a preface may be (a server's
    // read or a client's write, on a new object or one reused, as Go's
    // are, whose end apm does not see), or a frame header. Noise beside
    // the uprobe's own trap.
    let first = if n >= 16 {
        h2::Bytes::load::<16>(&plain, 0)
    } else {
        None
    };
    let fresh = if n >= h2::PREFACE_LEN && first.as_ref() == Some(PREFACE) {
        // A new connection: the preface's direction followed past it,
        // the other from its next call, which starts a frame.
        let mut fresh = [H2Dir::at(0, 0); 2];
        fresh[write] = H2Dir::at(0, h2::PREFACE_LEN);
        Some(fresh)
    } else if dirs.is_none()
        && match &first {
            Some(b) => h2::starts_frames_with(
                &plain,
                n,
                &[b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8]],
            ),
            None => h2::starts_frames(&plain, n),
        }
    {
        // Joined mid-way (a connection older than the agent, or its
        // state evicted): this direction from here, the other from its
        // first call that starts with frames.
        let mut joined = [H2Dir::resuming(0), H2Dir::resuming(0)];
        joined[write] = H2Dir::at(0, 0);
        Some(joined)
    } else {
        None
    };
    if let Some(fresh) = fresh
        && TLS_H2.insert(at, fresh, 0).is_ok()
    {
        dirs = TLS_H2.get_ptr_mut(at);
    }
    let Some(dirs) = dirs else {
        emit_buf(kind, key, port, moved, call.buf);
        return;
    };
    // SAFETY: a map value, valid for the program's run; write is 0 or 1.
    let d = unsafe { core::ptr::addr_of_mut!((*dirs)[write]) };
    // SAFETY: as above.
    let seq = unsafe { (*d).end };
    if let Some(from) = h2::follow(&plain, d, seq, n, false) {
        // Not followed from `from` on: the rest as one record, its first
        // DATA_CAP bytes copied.
        emit_buf(
            kind,
            key,
            port,
            i64::from(n - from),
            call.buf + u64::from(from),
        );
    }
}

/// `SSL_free` of object `ssl` of process `tgid`.
#[inline(always)]
pub fn freed(tgid: u32, ssl: u64) {
    let _ = TLS_H2.remove(object(tgid, ssl));
}
