//! Pairing on traffic as real clients and servers send it, cut the way the
//! capture cuts it: heads longer than the capture, bodies of many
//! segments, chunked streams, pipelined batches past the capture. Every
//! test ends with the books balanced: each request seen is completed,
//! unpaired or still in flight.

use apm_common::events::{DATA_CAP, TAIL_CAP};

use super::*;

impl Conn1 {
    /// One segment of `bytes` as the packet capture reports it: the first
    /// DATA_CAP bytes, and the last TAIL_CAP of a longer one.
    fn seg(&mut self, kind: Flow, ts: u64, bytes: &[u8]) {
        let data = &bytes[..bytes.len().min(DATA_CAP)];
        let tail = if bytes.len() > DATA_CAP {
            &bytes[bytes.len() - TAIL_CAP..]
        } else {
            &[]
        };
        self.ev_tail(kind, ts, data, bytes.len() as i64, tail);
    }

    /// `bytes` cut into segments of at most `mss` bytes, `step` ns apart.
    fn segs(&mut self, kind: Flow, ts: u64, bytes: &[u8], mss: usize) {
        for (i, s) in bytes.chunks(mss).enumerate() {
            self.seg(kind, ts + i as u64, s);
        }
    }

    /// Seen = completed + unpaired + in flight.
    fn assert_balanced(&self) {
        assert_eq!(
            self.r.requests,
            self.r.done.len() + self.r.unpaired.len() + self.t.in_flight().count(),
            "{:?} {:?}",
            self.r.done,
            self.r.unpaired
        );
    }
}

const MSS: usize = 1448;

fn get_with_cookie(path: &str, cookie_len: usize) -> Vec<u8> {
    let cookie = "c".repeat(cookie_len);
    format!("GET {path} HTTP/1.1\r\nHost: shop\r\nCookie: session={cookie}\r\nAccept: */*\r\n\r\n")
        .into_bytes()
}

fn ok(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[test]
fn heads_longer_than_the_capture_in_one_segment_each() {
    let mut c = Conn1::new();
    for (i, path) in ["/a", "/b", "/c"].into_iter().enumerate() {
        let t = 100 * i as u64;
        c.seg(Flow::ToServer, t, &get_with_cookie(path, 1536));
        c.seg(Flow::FromServer, t + 10, &ok("fine"));
    }
    assert_eq!(
        c.r.done,
        vec![
            done(Method::Get, "/a", 200, 10),
            done(Method::Get, "/b", 200, 10),
            done(Method::Get, "/c", 200, 10)
        ]
    );
    assert!(c.r.resyncs.is_empty() && c.r.unpaired.is_empty());
    c.assert_balanced();
}

#[test]
fn heads_of_several_segments_with_a_bearer_token() {
    let mut c = Conn1::new();
    for (i, len) in [1536, 4096, 8192].into_iter().enumerate() {
        let t = 1000 * i as u64;
        let token = "e".repeat(len);
        let head = format!(
            "GET /orders/{i} HTTP/1.1\r\nAuthorization: Bearer {token}\r\nX-Trace: 1\r\n\r\n"
        );
        c.segs(Flow::ToServer, t, head.as_bytes(), MSS);
        c.seg(Flow::FromServer, t + 100, &ok("[]"));
    }
    assert_eq!(c.r.done.len(), 3, "{:?} {:?}", c.r.resyncs, c.r.unpaired);
    assert!(c.r.done.iter().all(|d| d.2 == 200));
    assert!(c.r.resyncs.is_empty() && c.r.unpaired.is_empty());
    c.assert_balanced();
}

#[test]
fn a_post_with_a_long_head_and_a_body_of_many_segments() {
    let mut c = Conn1::new();
    let body = "x".repeat(30_000);
    let post = format!(
        "POST /items HTTP/1.1\r\nCookie: s={}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        "k".repeat(2000),
        body.len()
    );
    c.segs(Flow::ToServer, 0, post.as_bytes(), MSS);
    c.seg(
        Flow::FromServer,
        100,
        b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
    );
    // A body starting like a request line would be a request: a plain
    // request after it is exact again.
    c.seg(Flow::ToServer, 200, &get_with_cookie("/next", 10));
    c.seg(Flow::FromServer, 230, &ok("ok"));
    assert_eq!(
        c.r.done,
        vec![
            done(Method::Post, "/items", 201, 100),
            done(Method::Get, "/next", 200, 30)
        ]
    );
    c.assert_balanced();
}

#[test]
fn a_csv_stream_whose_rows_end_in_zero_crlf() {
    let mut c = Conn1::new();
    c.seg(Flow::ToServer, 0, &get_with_cookie("/report.csv", 10));
    c.seg(
        Flow::FromServer,
        1,
        b"HTTP/1.1 200 OK\r\nContent-Type: text/csv\r\nTransfer-Encoding: chunked\r\n\r\n",
    );
    for row in 0..20u64 {
        // A row written by Python's csv module: "id,amount\r\n".
        let line = format!("{row},{}0\r\n", row * 10);
        let chunk = format!("{:x}\r\n{line}\r\n", line.len());
        c.seg(Flow::FromServer, 10 + row, chunk.as_bytes());
    }
    assert!(c.r.done.is_empty(), "ended early: {:?}", c.r.done);
    c.seg(Flow::FromServer, 50, b"0\r\n\r\n");
    c.seg(Flow::ToServer, 60, &get_with_cookie("/after", 10));
    c.seg(Flow::FromServer, 70, &ok("ok"));
    assert_eq!(
        c.r.done,
        vec![
            done(Method::Get, "/report.csv", 200, 50),
            done(Method::Get, "/after", 200, 10)
        ]
    );
    c.assert_balanced();
}

#[test]
fn a_terminator_split_across_segments_and_a_trailer() {
    let mut c = Conn1::new();
    c.seg(Flow::ToServer, 0, &get_with_cookie("/split", 10));
    c.seg(
        Flow::FromServer,
        1,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n",
    );
    assert!(c.r.done.is_empty());
    c.seg(Flow::FromServer, 5, b"\r\n");
    c.seg(Flow::ToServer, 10, &get_with_cookie("/trailer", 10));
    c.seg(
        Flow::FromServer,
        11,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n2\r\nhi\r\n0\r\nX-Sum: 10\r\n",
    );
    c.seg(Flow::FromServer, 15, b"\r\n");
    c.seg(Flow::ToServer, 20, &get_with_cookie("/last", 10));
    c.seg(Flow::FromServer, 22, &ok(""));
    assert_eq!(
        c.r.done,
        vec![
            done(Method::Get, "/split", 200, 5),
            done(Method::Get, "/trailer", 200, 5),
            done(Method::Get, "/last", 200, 2)
        ]
    );
    c.assert_balanced();
}

#[test]
fn a_multi_megabyte_download_in_segments() {
    let mut c = Conn1::new();
    c.seg(Flow::ToServer, 0, &get_with_cookie("/big.bin", 2000));
    let len = 3 << 20;
    let mut resp = format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n").into_bytes();
    resp.resize(resp.len() + len, b'z');
    c.segs(Flow::FromServer, 10, &resp, 64 * 1024);
    c.seg(Flow::ToServer, 1000, &get_with_cookie("/small.txt", 2000));
    c.seg(Flow::FromServer, 1001, &ok("x"));
    assert_eq!(
        c.r.done,
        vec![
            done(Method::Get, "/big.bin", 200, 10 + 48),
            done(Method::Get, "/small.txt", 200, 1)
        ]
    );
    c.assert_balanced();
}

#[test]
fn pipelined_responses_past_the_capture_are_counted_and_the_next_request_is_exact() {
    let mut c = Conn1::new();
    let batch: Vec<u8> = (0..16)
        .flat_map(|i| format!("GET /p/{i} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes())
        .collect();
    c.seg(Flow::ToServer, 0, &batch);
    assert_eq!(c.r.requests, 16);
    // All 16 responses in one segment: only the first few are captured.
    let body = "y".repeat(200);
    let responses: Vec<u8> = (0..16).flat_map(|_| ok(&body)).collect();
    assert!(responses.len() > DATA_CAP);
    c.seg(Flow::FromServer, 10, &responses);
    let paired = c.r.done.len();
    assert!(paired > 0 && paired < 16, "{paired}");
    assert_eq!(c.r.unpaired, vec![Unpaired::Truncated; 16 - paired]);
    assert_eq!(c.r.resyncs, vec![Unpaired::Truncated]);
    c.seg(Flow::ToServer, 20, &get_with_cookie("/again", 10));
    c.seg(Flow::FromServer, 25, &ok("ok"));
    assert_eq!(c.r.done.last(), Some(&done(Method::Get, "/again", 200, 5)));
    c.assert_balanced();
}

#[test]
fn a_head_whose_end_is_never_seen_is_counted_and_the_next_request_is_exact() {
    let mut c = Conn1::new();
    // A 3000-byte head and its body in one segment: the blank line and
    // Content-Length are beyond the capture.
    let body = "b".repeat(500);
    let post = format!(
        "POST /upload HTTP/1.1\r\nCookie: {}\r\nContent-Length: {}\r\n\r\n{body}",
        "q".repeat(3000),
        body.len()
    );
    c.seg(Flow::ToServer, 0, post.as_bytes());
    c.seg(
        Flow::FromServer,
        10,
        b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
    );
    c.seg(Flow::ToServer, 20, &get_with_cookie("/again", 10));
    c.seg(Flow::FromServer, 25, &ok("ok"));
    assert_eq!(
        c.r.done,
        vec![
            done(Method::Post, "/upload", 201, 10),
            done(Method::Get, "/again", 200, 5)
        ]
    );
    c.assert_balanced();
}

/// A POST whose head spans three segments and whose body segments each
/// start like a request: the body is skipped by the Content-Length its
/// captured lines gave, from the blank line found in a later segment.
#[test]
fn body_segments_that_start_like_requests_behind_a_long_head() {
    let mut c = Conn1::new();
    let seg = |i: usize| {
        format!(
            "GET /phantom/{i} HTTP/1.1\r\nHost: x\r\n\r\n{}",
            "p".repeat(1400)
        )
    };
    let body: String = (0..8).map(seg).collect::<Vec<_>>().concat();
    let head = format!(
        "POST /captures HTTP/1.1\r\nContent-Length: {}\r\nCookie: {}\r\nAccept: */*\r\n\r\n",
        body.len(),
        "k".repeat(3000)
    );
    // Head and body written separately: the body's segments each start
    // with a request line.
    c.segs(Flow::ToServer, 0, head.as_bytes(), MSS);
    for (i, s) in body.as_bytes().chunks(seg(0).len()).enumerate() {
        c.seg(Flow::ToServer, 10 + i as u64, s);
    }
    c.seg(
        Flow::FromServer,
        100,
        b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n",
    );
    c.seg(Flow::ToServer, 200, &get_with_cookie("/after", 10));
    c.seg(Flow::FromServer, 210, &ok("ok"));
    assert_eq!(
        c.r.done,
        vec![
            done(Method::Post, "/captures", 202, 100),
            done(Method::Get, "/after", 200, 10)
        ]
    );
    assert_eq!(c.r.requests, 2);
    c.assert_balanced();
}

/// A head that ends exactly where a long segment ends: the blank line is
/// in the segment's tail, and the body after it is skipped by count.
#[test]
fn a_blank_line_in_the_tail_ends_a_long_head() {
    let mut c = Conn1::new();
    let body = format!("GET /phantom HTTP/1.1\r\n\r\n{}", "z".repeat(500));
    let head = format!(
        "POST /t HTTP/1.1\r\nContent-Length: {}\r\nCookie: {}\r\n\r\n",
        body.len(),
        "k".repeat(1200)
    );
    c.seg(Flow::ToServer, 0, head.as_bytes());
    c.seg(Flow::ToServer, 1, body.as_bytes());
    c.seg(
        Flow::FromServer,
        5,
        b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(c.r.done, vec![done(Method::Post, "/t", 201, 5)]);
    assert_eq!(c.r.requests, 1);
    c.assert_balanced();
}

/// Pipelined responses whose next head is cut by the capture: the
/// requests behind it are dropped as truncated, never paired with the
/// wrong response.
#[test]
fn a_cut_response_head_with_requests_behind_it() {
    let mut c = Conn1::new();
    let batch: Vec<u8> = (0..4)
        .flat_map(|i| format!("GET /q/{i} HTTP/1.1\r\n\r\n").into_bytes())
        .collect();
    c.seg(Flow::ToServer, 0, &batch);
    // The first response fills most of the capture; the second's head
    // starts in it and is cut.
    let mut segment = ok(&"a".repeat(900));
    segment.extend_from_slice(
        format!(
            "HTTP/1.1 404 Not Found\r\nX-Pad: {}\r\nContent-Length: 2\r\n\r\nno",
            "p".repeat(300)
        )
        .as_bytes(),
    );
    segment.extend_from_slice(&ok("c"));
    c.seg(Flow::FromServer, 10, &segment);
    c.seg(Flow::FromServer, 11, &ok("d"));
    assert_eq!(c.r.done, vec![done(Method::Get, "/q/0", 200, 10)]);
    assert_eq!(c.r.unpaired, vec![Unpaired::Truncated; 3]);
    c.seg(Flow::ToServer, 20, &get_with_cookie("/next", 10));
    c.seg(Flow::FromServer, 22, &ok("ok"));
    assert_eq!(c.r.done.last(), Some(&done(Method::Get, "/next", 200, 2)));
    c.assert_balanced();
}
