use super::*;

/// A typed message.
pub fn msg(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![kind];
    m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// A StartupMessage for `user`.
pub fn startup(user: &str) -> Vec<u8> {
    let mut body = PROTOCOL_3.to_be_bytes().to_vec();
    body.extend_from_slice(b"user\0");
    body.extend_from_slice(user.as_bytes());
    body.extend_from_slice(b"\0\0");
    let mut m = (body.len() as u32 + 4).to_be_bytes().to_vec();
    m.extend_from_slice(&body);
    m
}

/// (kind, body, cut) of every message framed from `pieces` of (bytes,
/// total length).
fn frame(framer: &mut Framer, pieces: &[(&[u8], usize)]) -> Vec<(u8, Vec<u8>, bool)> {
    let mut got = Vec::new();
    for (data, total) in pieces {
        let _ = framer.feed(data, *total, |m| got.push((m.kind, m.body.to_vec(), m.cut)));
    }
    got
}

#[test]
fn a_clients_messages_split_anywhere_frame_the_same() {
    let mut bytes = startup("bench");
    bytes.extend(msg(b'Q', b"SELECT 1\0"));
    bytes.extend(msg(b'P', b"s1\0SELECT $1\0\0\0"));
    bytes.extend(msg(b'B', b"\0s1\0\0\0\0\0\0\0"));
    bytes.extend(msg(b'E', b"\0\0\0\0\0"));
    bytes.extend(msg(b'S', b""));
    let whole = frame(&mut Framer::new(Side::Front), &[(&bytes, bytes.len())]);
    let kinds: Vec<u8> = whole.iter().map(|m| m.0).collect();
    assert_eq!(kinds, b"\0QPBES");
    assert_eq!(whole[1].1, b"SELECT 1\0");
    for cut in 1..bytes.len() {
        let (a, b) = bytes.split_at(cut);
        let split = frame(&mut Framer::new(Side::Front), &[(a, a.len()), (b, b.len())]);
        assert_eq!(split, whole, "split at {cut}");
    }
}

#[test]
fn a_body_past_the_capture_is_skipped_by_its_length() {
    let mut back = msg(b'T', &[7u8; 100]);
    back.extend(msg(b'D', &[9u8; 5000]));
    back.extend(msg(b'C', b"SELECT 1\0"));
    back.extend(msg(b'Z', b"I"));
    // Only the first 200 bytes of the 5000-byte row were captured; the
    // next header is in a later piece.
    let row_end = 105 + 5005;
    let mut f = Framer::new(Side::Back);
    let got = frame(
        &mut f,
        &[
            (&back[..200], row_end),
            (&back[row_end..], back.len() - row_end),
        ],
    );
    let kinds: Vec<u8> = got.iter().map(|m| m.0).collect();
    assert_eq!(kinds, b"TDCZ");
    assert_eq!(got[2].1, b"SELECT 1\0");
}

#[test]
fn a_header_past_the_capture_loses_the_place_until_a_message_starts() {
    let mut back = msg(b'D', &[9u8; 500]);
    back.extend(msg(b'C', b"SELECT 1\0"));
    let mut f = Framer::new(Side::Back);
    assert_eq!(
        f.feed(&back[..100], back.len(), |_| {}),
        Err(Desync::Truncated)
    );
    assert!(f.lost());
    // Garbage does not bring it back; a message does.
    assert_eq!(f.feed(b"\xff\x00", 2, |_| {}), Err(Desync::Garbage));
    let z = msg(b'Z', b"I");
    assert_eq!(
        frame(&mut f, &[(&z, z.len())]),
        vec![(b'Z', b"I".to_vec(), false)]
    );
}

#[test]
fn an_ssl_request_is_answered_by_one_byte() {
    let mut front = Framer::new(Side::Front);
    let mut req = 8u32.to_be_bytes().to_vec();
    req.extend_from_slice(&SSL_REQUEST.to_be_bytes());
    let mut codes = Vec::new();
    front
        .feed(&req, req.len(), |m| codes.push((m.kind, m.code)))
        .expect("request");
    assert_eq!(codes, vec![(0, SSL_REQUEST)]);
    let mut back = Framer::new(Side::Back);
    back.expect_answer();
    let mut answer = vec![b'N'];
    answer.extend(msg(b'R', &[0, 0, 0, 0]));
    let mut got = Vec::new();
    back.feed(&answer, answer.len(), |m| got.push((m.kind, m.code)))
        .expect("answer");
    assert_eq!(got[0], (0, u32::from(b'N')));
    assert_eq!(got[1].0, b'R');
    // Refused: the startup message follows.
    front.expect_startup();
    let s = startup("u");
    assert_eq!(frame(&mut front, &[(&s, s.len())])[0].0, 0);
}

#[test]
fn garbage_is_no_message() {
    let mut f = Framer::new(Side::Front);
    assert_eq!(
        f.feed(b"GET / HTTP/1.1\r\n\r\n", 18, |_| {}),
        Err(Desync::Garbage)
    );
    let mut f = Framer::joined(Side::Front);
    assert_eq!(
        f.feed(b"Q\xff\xff\xff\xff", 5, |_| {}),
        Err(Desync::Garbage)
    );
    assert!(!starts_like_startup(b"\0\0\0\x08\0\0\0\0"));
    assert!(starts_like_startup(&startup("x")));
}

#[test]
fn an_error_says_its_sqlstate() {
    let body = b"SERROR\0VERROR\0C23505\0Mduplicate key value\0\0";
    assert_eq!(sqlstate(body), Some(*b"23505"));
    assert_eq!(sqlstate(b"SERROR\0\0"), None);
    assert_eq!(sqlstate(b"C2350"), None);
    assert_eq!(sqlstate(b"C12\0"), None);
}

#[test]
fn a_long_query_is_kept_to_its_first_bytes() {
    let mut sql = b"SELECT ".to_vec();
    sql.extend(std::iter::repeat_n(b'a', 2 * KEEP));
    sql.push(0);
    let q = msg(b'Q', &sql);
    // Joined after the startup: typed messages from the first piece.
    let got = frame(&mut Framer::joined(Side::Front), &[(&q, q.len())]);
    assert_eq!(got[0].1.len(), KEEP);
    assert!(got[0].2);
}

#[test]
fn lengths_past_what_the_server_sends_or_takes_are_no_message() {
    // A Sync is 4 bytes, a ReadyForQuery 5; a CSV line starting "d," is
    // not a CopyData of 741 MB.
    assert!(starts_like_message(Side::Front, b"S\0\0\0\x04"));
    assert!(!starts_like_message(Side::Front, b"S\0\0\0\x05"));
    assert!(!starts_like_message(Side::Front, b"d,12,x"));
    assert!(starts_like_message(Side::Back, b"Z\0\0\0\x05I"));
    assert!(!starts_like_message(Side::Back, b"Z\0\0\0\x06I"));
    assert!(!starts_like_message(Side::Back, b"C\0\x20\0\0"));
}
