//! W3C Trace Context: the `traceparent` request header, the only header
//! whose value leaves the parser (as ids, never as text).

/// A caller's span: the trace it belongs to and its span id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub parent_id: [u8; 8],
    /// The caller's sampled flag.
    pub sampled: bool,
}

/// Parses a `traceparent` value: `00-<32 hex>-<16 hex>-<2 hex>`; a later
/// version may append fields after a dash. All-zero ids, upper-case hex
/// and version `ff` are invalid (the header is then ignored).
pub fn parse(value: &[u8]) -> Option<TraceParent> {
    let v = value.trim_ascii();
    if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let version = hex::<1>(&v[..2])?;
    if version[0] == 0xff || (version[0] == 0 && v.len() != 55) || (v.len() > 55 && v[55] != b'-') {
        return None;
    }
    let trace_id = hex::<16>(&v[3..35])?;
    let parent_id = hex::<8>(&v[36..52])?;
    let flags = hex::<1>(&v[53..55])?;
    (trace_id != [0; 16] && parent_id != [0; 8]).then_some(TraceParent {
        trace_id,
        parent_id,
        sampled: flags[0] & 1 != 0,
    })
}

/// `2 * N` lower-case hex digits.
fn hex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, pair) in s.chunks_exact(2).enumerate().take(N) {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    (s.len() == 2 * N).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::parse;

    const OK: &[u8] = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_spec_example_parses() {
        let t = parse(OK).expect("valid");
        assert_eq!(t.trace_id[0], 0x4b);
        assert_eq!(t.trace_id[15], 0x36);
        assert_eq!(
            t.parent_id,
            [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]
        );
        assert!(t.sampled);
        assert!(
            parse(b" 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00 ")
                .is_some_and(|t| !t.sampled)
        );
    }

    #[test]
    fn invalid_values_are_ignored() {
        for bad in [
            &b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"[..],
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xx",
            b"00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            b"",
        ] {
            assert_eq!(parse(bad), None, "{}", String::from_utf8_lossy(bad));
        }
        // A later version may carry more fields.
        assert!(parse(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz").is_some());
    }
}
