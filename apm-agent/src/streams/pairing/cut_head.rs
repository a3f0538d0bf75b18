//! A message head longer than the capture, followed through the parts of
//! it that were captured: the header lines read whole (between two line
//! ends) say how the body is framed, and the blank line, where it was
//! captured (in a piece's first bytes or its tail), says where the body
//! starts. With both, the body is skipped by count even when every one of
//! its segments starts like a request.

/// What the captured lines of a cut head said about its body.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CutHead {
    /// `Content-Length`, when a whole such line was captured.
    pub length: Option<u64>,
    /// `Transfer-Encoding: chunked`, when a whole such line was captured.
    pub chunked: bool,
}

impl CutHead {
    /// Reads `region`, captured bytes of the head: its header lines (the
    /// first fragment too when `at_line_start`), up to a blank line.
    /// Returns the offset just past the blank line when the head ends in
    /// `region`.
    pub fn scan(&mut self, region: &[u8], at_line_start: bool) -> Option<usize> {
        let mut start = if at_line_start {
            Some(0)
        } else {
            // The first fragment may be the end of a line cut short.
            None
        };
        for nl in memchr::memchr_iter(b'\n', region) {
            if let Some(s) = start {
                let line = region[s..nl].strip_suffix(b"\r").unwrap_or(&region[s..nl]);
                if line.is_empty() {
                    return Some(nl + 1);
                }
                self.header(line);
            }
            start = Some(nl + 1);
        }
        None
    }

    fn header(&mut self, line: &[u8]) {
        let Some(colon) = memchr::memchr(b':', line) else {
            return;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if name.eq_ignore_ascii_case(b"content-length") {
            if !value.is_empty() && value.iter().all(u8::is_ascii_digit) {
                self.length = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            // The last coding is the one that frames the body.
            let last = value.rsplit(|&b| b == b',').next().unwrap_or(&[]);
            self.chunked = last.trim_ascii().eq_ignore_ascii_case(b"chunked");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_lines_frame_the_body_and_the_blank_line_ends_the_head() {
        let mut h = CutHead::default();
        // A region that starts in the middle of a cookie.
        let region = b"cccc; b=2\r\nContent-Length: 1234\r\nX: y\r\n\r\nbody";
        assert_eq!(h.scan(region, false), Some(region.len() - 4));
        assert_eq!(h.length, Some(1234));
        assert!(!h.chunked);
    }

    #[test]
    fn a_line_cut_at_either_end_is_not_read() {
        let mut h = CutHead::default();
        // "Content-Length: 12" may be the start of "...: 1234".
        assert_eq!(h.scan(b"x\r\nContent-Length: 12", false), None);
        assert_eq!(h.scan(b"-Length: 99\r\nA: b\r\n", false), None);
        assert_eq!(h.length, None);
        // At a line start the first line counts.
        assert_eq!(h.scan(b"Transfer-Encoding: gzip, chunked\r\n", true), None);
        assert!(h.chunked);
    }

    #[test]
    fn the_blank_line_at_a_region_start_or_in_a_tail() {
        let mut h = CutHead::default();
        assert_eq!(h.scan(b"\r\nbody", true), Some(2));
        assert_eq!(h.scan(b"xyz\r\n\r\n", false), Some(7));
        // The first "\n" ends a line cut short, then comes the blank line.
        assert_eq!(h.scan(b"\n\r\n\r\nGET", false), Some(3));
        assert_eq!(h.scan(b"\r\n\r\nGET", false), Some(4));
    }
}
