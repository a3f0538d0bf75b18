use loona_hpack::Encoder;

use super::{
    Headers,
    frames::{Frame, Framer, Lost, PREFACE, flags, fragment, kind},
    grpc_timeout,
    hpack::{DEFAULT_TABLE, Decoder},
    read_block,
    static_table::STATIC,
};
use crate::protocols::http::Method;

fn request(path: &str, extra: &[(&str, &str)]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut h = vec![
        (b":method".to_vec(), b"POST".to_vec()),
        (b":scheme".to_vec(), b"http".to_vec()),
        (b":path".to_vec(), path.as_bytes().to_vec()),
        (b":authority".to_vec(), b"localhost:50051".to_vec()),
        (b"content-type".to_vec(), b"application/grpc".to_vec()),
        (b"te".to_vec(), b"trailers".to_vec()),
    ];
    h.extend(
        extra
            .iter()
            .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec())),
    );
    h
}

fn encode(e: &mut Encoder<'_>, fields: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    e.encode(fields.iter().map(|(n, v)| (&n[..], &v[..])))
}

#[test]
fn requests_decode_through_the_dynamic_table_as_the_encoder_fills_it() {
    let (mut e, mut d) = (Encoder::new(), Decoder::new(false));
    for i in 0..50 {
        let path = format!("/shop.Cart/Add{}", i % 3);
        let block = encode(&mut e, &request(&path, &[("grpc-timeout", "50m")]));
        let h = read_block(&mut d, &block).expect("decodes");
        assert_eq!(
            h,
            Headers {
                method: Some(Method::Post),
                path: Some(path),
                grpc: true,
                grpc_timeout_ns: Some(50_000_000),
                ..Headers::default()
            }
        );
    }
}

/// A literal with incremental indexing of a new name and value.
fn indexed_literal(name: &str, value: &str) -> Vec<u8> {
    let mut b = vec![0x40, name.len() as u8];
    b.extend(name.as_bytes());
    b.push(value.len() as u8);
    b.extend(value.as_bytes());
    b
}

/// An indexed field (index < 127).
fn index(i: u8) -> u8 {
    0x80 | i
}

#[test]
fn a_decoder_joined_mid_way_never_names_a_wrong_path_and_heals_once_the_table_turns_over() {
    // Before the agent, the connection's encoder put `:method POST` and
    // `:path /shop.Cart/Add` in its table (62: the path, 63: POST).
    // Joined now, apm sees a request that names both by index.
    let mut d = Decoder::new(true);
    let h = read_block(&mut d, &[index(63), index(62)]).expect("decodes");
    assert!(h.unknown, "{h:?}");
    assert_eq!(h.path, None, "a path apm did not see is not guessed");
    assert_eq!(h.method, None);
    // A new entry apm sees inserted is exact, ahead of the unknown ones.
    let mut block = indexed_literal(":path", "/shop.Cart/Get");
    block.extend([index(62), index(63)]);
    let mut paths = Vec::new();
    d.decode(&block, |f| paths.push(f)).expect("decodes");
    assert_eq!(paths.len(), 3);
    assert_eq!(paths[1], paths[0], "62 is now the entry apm saw");
    assert_eq!(
        paths[2],
        super::hpack::Field::Unknown,
        "63 is the old :path"
    );
    assert!(d.partial());
    // Entries apm sees fill the table until the ones it missed are gone.
    for i in 0..30 {
        let block = indexed_literal("x-pad", &format!("{i:0>100}"));
        read_block(&mut d, &block).expect("decodes");
    }
    assert!(!d.partial(), "the table turned over");
    let h = read_block(&mut d, &[index(2), index(81)]).expect("decodes");
    assert!(!h.unknown, "{h:?}");
    assert_eq!(h.method, Some(Method::Get));
    // Past every entry of a whole table: an index the encoder cannot
    // have sent, still not guessed.
    let h = read_block(&mut d, &[index(120)]).expect("decodes");
    assert!(h.unknown);
}

#[test]
fn loona_blocks_decode_the_same_with_apm_s_table() {
    let mut e = Encoder::new();
    let mut d = Decoder::new(false);
    for i in 0..30 {
        let path = format!("/items/{i}?q=secret");
        let fields = request(
            &path,
            &[(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            )],
        );
        let block = encode(&mut e, &fields);
        let h = read_block(&mut d, &block).expect("decodes");
        assert_eq!(h.path, Some(format!("/items/{i}")), "no query string");
        assert!(h.trace.is_some_and(|t| t.sampled));
    }
}

#[test]
fn a_size_update_to_zero_empties_the_table_and_makes_it_whole() {
    let mut d = Decoder::new(true);
    // Size update to 0, then back to 4096, then a literal with indexing
    // (name :path from the static table) and the index of what it added.
    let mut block = vec![0x20, 0x3f, 0xe1, 0x1f];
    block.extend([0x44, 0x06]);
    block.extend(b"/a/b/c");
    block.push(0x80 | 62);
    let mut paths = Vec::new();
    d.decode(&block, |f| {
        if let super::hpack::Field::Kept { value, .. } = f {
            paths.push(value);
        }
    })
    .expect("decodes");
    assert_eq!(paths, vec![b"/a/b/c".to_vec(), b"/a/b/c".to_vec()]);
    assert!(!d.partial());
    // A size update past what is followed makes it partial again.
    d.decode(&[0x3f, 0xe1, 0xff, 0xff, 0x0f], |_| {})
        .expect("decodes");
    assert!(d.partial());
}

#[test]
fn the_static_table_is_rfc_7541s() {
    // Each static name through loona-hpack's decoder, as a literal
    // without indexing that names it by index.
    for (i, (name, _)) in STATIC.iter().enumerate() {
        let index = i + 1;
        let mut block = if index < 15 {
            vec![index as u8]
        } else {
            vec![0x0f, (index - 15) as u8]
        };
        block.extend([0x01, b'x']);
        let got = loona_hpack::Decoder::new()
            .decode(&block)
            .expect("loona decodes");
        assert_eq!(got, vec![(name.as_bytes().to_vec(), b"x".to_vec())]);
    }
    assert_eq!(DEFAULT_TABLE, 4096);
}

#[test]
fn hostile_blocks_are_errors_not_panics() {
    let mut d = Decoder::new(false);
    for block in [
        &[0x80][..], // index 0
        &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff][..],
        &[0x40, 0x85, 0xff][..], // a name longer than the block
        &[0x04, 0x81, 0xff][..], // bad Huffman (EOS padding)
    ] {
        assert!(read_block(&mut d, block).is_err(), "{block:?}");
    }
    // An index past everything seen is unknown, not an error.
    let h = read_block(&mut Decoder::new(false), &[0xff, 0x10]).expect("decodes");
    assert!(h.unknown);
}

#[test]
fn grpc_timeouts_and_statuses() {
    assert_eq!(grpc_timeout(b"50m"), Some(50_000_000));
    assert_eq!(grpc_timeout(b"2S"), Some(2_000_000_000));
    assert_eq!(grpc_timeout(b"123456789n"), None);
    assert_eq!(grpc_timeout(b"5x"), None);
    assert_eq!(super::grpc_code_name(5), "NOT_FOUND");
    assert_eq!(super::grpc_code_name(99), "UNKNOWN");
}

/// Frames as bytes.
fn frame_bytes(k: u8, f: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut b = len.to_be_bytes()[1..].to_vec();
    b.extend([k, f]);
    b.extend(stream.to_be_bytes());
    b.extend_from_slice(payload);
    b
}

fn collect(framer: &mut Framer, pieces: &[(&[u8], usize)]) -> Vec<Frame> {
    let mut out = Vec::new();
    for (i, (data, len)) in pieces.iter().enumerate() {
        framer.feed(i as u64, Some(1000), data, *len, |f| out.push(f));
    }
    out
}

#[test]
fn frames_split_anywhere_come_out_whole() {
    let mut bytes = PREFACE.to_vec();
    bytes.extend(frame_bytes(kind::SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100]));
    // Padded HEADERS with priority, then a CONTINUATION.
    let mut headers = vec![2u8];
    headers.extend([0, 0, 0, 0, 16]);
    headers.extend(b"abc");
    headers.extend([0, 0]);
    bytes.extend(frame_bytes(
        kind::HEADERS,
        flags::PADDED | flags::PRIORITY,
        1,
        &headers,
    ));
    bytes.extend(frame_bytes(
        kind::CONTINUATION,
        flags::END_HEADERS,
        1,
        b"de",
    ));
    bytes.extend(frame_bytes(kind::DATA, flags::END_STREAM, 1, &[7; 40]));
    for cut in 0..bytes.len() {
        let mut f = Framer::new(true);
        let (a, b) = bytes.split_at(cut);
        let got = collect(&mut f, &[(a, a.len()), (b, b.len())]);
        assert_eq!(f.lost(), None, "cut at {cut}");
        let kinds: Vec<u8> = got.iter().map(|f| f.kind).collect();
        assert_eq!(
            kinds,
            [
                kind::SETTINGS,
                kind::HEADERS,
                kind::CONTINUATION,
                kind::DATA
            ]
        );
        assert_eq!(fragment(&got[1]), Some(&b"abc"[..]));
        assert_eq!(got[2].payload, b"de");
        assert!(got[3].payload.is_empty(), "DATA is not kept");
        assert_eq!(got[3].flags, flags::END_STREAM);
    }
}

#[test]
fn framing_resumes_only_at_a_piece_that_starts_with_frames() {
    let settings = frame_bytes(kind::SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100]);
    let mut two = frame_bytes(kind::HEADERS, flags::END_HEADERS, 1, b"ab");
    two.extend(frame_bytes(kind::DATA, flags::END_STREAM, 1, &[0; 300]));
    assert!(super::frames::starts_frames(&settings, settings.len()));
    assert!(super::frames::starts_frames(&two, two.len()));
    // Only DATA's header captured: the chain runs past the capture.
    assert!(super::frames::starts_frames(&two[..20], two.len()));
    for bytes in [
        &b"\x17\x03\x03\x00\x20garbage-after"[..],
        &[0xff; 40],
        &two[3..],
    ] {
        assert!(
            !super::frames::starts_frames(bytes, bytes.len()),
            "{bytes:?}"
        );
    }
    // One frame that does not end the piece is not enough.
    assert!(!super::frames::starts_frames(
        &settings,
        settings.len() + 50
    ));
}

#[test]
fn data_payload_need_not_be_captured_but_a_header_must() {
    let data = frame_bytes(kind::DATA, 0, 1, &[0; 1000]);
    let next = frame_bytes(kind::HEADERS, flags::END_HEADERS, 1, b"xy");
    // The DATA payload's 1000 bytes are not captured: the next frame is
    // still found.
    let mut f = Framer::new(false);
    let got = collect(&mut f, &[(&data[..9], 1009), (&next, next.len())]);
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].payload, b"xy");
    // A header not captured loses the framing.
    let mut f = Framer::new(false);
    let got = collect(
        &mut f,
        &[(&data[..9], 1009 + 4), (&next[4..], next.len() - 4)],
    );
    assert_eq!(got.len(), 1);
    assert_eq!(f.lost(), Some(Lost::Gap));
    // So does a client stream that does not start with the preface.
    let mut f = Framer::new(true);
    collect(&mut f, &[(b"GET / HTTP/1.1\r\n", 16)]);
    assert_eq!(f.lost(), Some(Lost::NoPreface));
}
