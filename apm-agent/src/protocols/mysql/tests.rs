use super::*;

/// A packet of sequence `seq` holding `payload`.
pub fn packet(seq: u8, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap_or(0).to_le_bytes();
    let mut p = vec![len[0], len[1], len[2], seq];
    p.extend_from_slice(payload);
    p
}

/// MariaDB 10.11's greeting (with its capabilities' both halves).
pub fn greeting_packet(version: &str, caps: u32) -> Vec<u8> {
    let mut g = vec![10];
    g.extend_from_slice(version.as_bytes());
    g.push(0);
    g.extend_from_slice(&7u32.to_le_bytes());
    g.extend_from_slice(b"12345678\0");
    g.extend_from_slice(&(caps as u16).to_le_bytes());
    g.push(8);
    g.extend_from_slice(&2u16.to_le_bytes());
    g.extend_from_slice(&((caps >> 16) as u16).to_le_bytes());
    g.extend_from_slice(&[21; 1]);
    g.extend_from_slice(&[0; 10]);
    g.extend_from_slice(b"901234567890\0mysql_native_password\0");
    packet(0, &g)
}

fn frame(f: &mut Framer, pieces: &[&[u8]]) -> Vec<(u8, u64, Vec<u8>, bool)> {
    let mut out = Vec::new();
    for p in pieces {
        f.feed(p, p.len(), |m| {
            out.push((m.seq, m.len, m.body.to_vec(), m.cut))
        })
        .expect("framed");
    }
    out
}

#[test]
fn packets_are_framed_across_pieces_and_kept_to_the_bound() {
    let mut bytes = packet(0, b"\x03SELECT 1");
    bytes.extend(packet(0, &[0x0e]));
    let (a, b) = bytes.split_at(6);
    let got = frame(&mut Framer::new(KEEP_FRONT), &[a, b]);
    assert_eq!(got.len(), 2);
    assert_eq!(got[0], (0, 9, b"\x03SELECT 1".to_vec(), false));
    assert_eq!(got[1].2, vec![0x0e]);
    // A server's row is kept to its first bytes only.
    let row = packet(3, &[b'x'; 100]);
    let got = frame(&mut Framer::new(KEEP_BACK), &[&row]);
    assert_eq!(got[0].1, 100);
    assert_eq!(got[0].2.len(), KEEP_BACK);
    assert!(got[0].3);
}

#[test]
fn a_split_payload_is_one_packet() {
    let mut f = Framer::new(KEEP_BACK);
    let mut out = Vec::new();
    // 16 MiB - 1, then 3 more bytes: one logical packet, not copied.
    let head = [0xff, 0xff, 0xff, 1, 0xaa];
    f.feed(&head, 4 + 0xff_ffff, |m| out.push(m.len))
        .expect("framed");
    f.feed(&packet(2, b"end"), 7, |m| out.push(m.len))
        .expect("framed");
    f.feed(&packet(3, b"\xfe\0\0\x02\0"), 9, |m| out.push(m.len))
        .expect("framed");
    assert_eq!(out, vec![0xff_ffff + 3, 5]);
}

#[test]
fn a_header_past_the_capture_loses_the_place() {
    let mut f = Framer::new(KEEP_BACK);
    let two = [packet(1, b"abc"), packet(2, b"def")].concat();
    // Only 5 of 14 bytes were captured.
    assert_eq!(f.feed(&two[..5], two.len(), |_| {}), Err(Desync::Truncated));
    assert!(f.is_lost());
}

#[test]
fn ok_eof_and_err_fields_are_read() {
    let ok = [0x00, 0x01, 0x00, 0x0a, 0x00, 0x00, 0x00];
    let p = Packet {
        seq: 1,
        len: 7,
        body: &ok,
        cut: false,
    };
    assert_eq!(p.status(), 0x000a);
    let eof = [0xfe, 0, 0, 0x08, 0x00];
    let p = Packet {
        seq: 5,
        len: 5,
        body: &eof,
        cut: false,
    };
    assert!(p.is_eof());
    assert_eq!(p.status(), MORE_RESULTS);
    // ERR 1064 with its SQLSTATE.
    let err = b"\xff\x28\x04#42000You have an error";
    let p = Packet {
        seq: 1,
        len: err.len() as u64,
        body: err,
        cut: false,
    };
    assert_eq!(p.error_code(), Some(*b"1064\0"));
    assert_eq!(lenenc(&[0xfc, 0x10, 0x27]), Some((10_000, 3)));
    assert_eq!(lenenc(&[0xfb]), None);
}

#[test]
fn a_greeting_says_mariadb_and_its_capabilities() {
    let g = greeting_packet("5.5.5-10.11.6-MariaDB-0+deb12u1", 0x0100_0200);
    assert!(starts_like_greeting(&g));
    let got = greeting(&g[4..]).expect("greeting");
    assert!(got.mariadb);
    assert_eq!(got.capabilities, 0x0100_0200);
    let g = greeting_packet("8.0.36", 0x200);
    assert!(!greeting(&g[4..]).expect("greeting").mariadb);
    assert_eq!(greeting(b"\xff\x10\x04Too many connections"), None);
}

#[test]
fn commands_and_answers_are_recognised_at_a_piece_start() {
    let q = packet(0, b"\x03SELECT 1");
    assert!(starts_like_command(&q, q.len()));
    assert!(starts_like_joined(&q, q.len()));
    // Cut: the piece does not hold it.
    assert!(!starts_like_command(&q, 5));
    assert!(!starts_like_command(b"GET / HTTP/1.1\r\n", 16));
    // COM_QUIT is a command, not one a joined connection is taken by.
    let quit = packet(0, &[0x01]);
    assert!(starts_like_command(&quit, quit.len()) && !starts_like_joined(&quit, quit.len()));
    assert!(starts_like_answer(&packet(1, &[0, 0, 0, 2, 0, 0, 0]), 11));
    assert!(starts_like_answer(&packet(1, &[3]), 5));
    assert!(!starts_like_answer(&packet(2, &[3]), 5));
    assert!(!starts_like_answer(b"HTTP/1.1 200 OK\r\n", 17));
}

#[test]
fn query_attributes_are_skipped_unread() {
    assert_eq!(query_text(b"SELECT 1", None), Some(&b"SELECT 1"[..]));
    assert_eq!(query_text(b"\0\x01SELECT 1", None), Some(&b"SELECT 1"[..]));
    assert_eq!(
        query_text(b"\0\x01SELECT 1", Some(true)),
        Some(&b"SELECT 1"[..])
    );
    // One string attribute: its value never reaches the text.
    let mut q = vec![1, 1, 0, 1, 0xfe, 0, 11];
    q.extend_from_slice(b"traceparent");
    q.push(7);
    q.extend_from_slice(b"00-abcd");
    q.extend_from_slice(b"SELECT 2");
    assert_eq!(query_text(&q, None), Some(&b"SELECT 2"[..]));
    // Nine attributes start with a tab's byte: the handshake tells.
    q[0] = 9;
    assert_eq!(query_text(&q, Some(false)), Some(&q[..]));
    // Cut short: not read.
    assert_eq!(query_text(&[1, 1, 0, 1, 0xfe, 0, 11, b't'], None), None);
}
