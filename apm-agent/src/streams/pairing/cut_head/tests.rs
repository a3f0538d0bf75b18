use super::*;

/// A later piece read whole.
fn whole(head: &mut CutHead, bytes: &[u8]) -> Option<Ended> {
    head.scan(bytes, &[], 0)
}

#[test]
fn a_head_read_whole_frames_its_body_exactly() {
    let (mut h, found) = CutHead::new(b"Content-Length: 1234\r\nCookie: aaaa", &[], 0, true);
    assert_eq!(found, None);
    let rest = b"bbbb; b=2\r\nX: y\r\n\r\nbody";
    assert_eq!(
        whole(&mut h, rest),
        Some((rest.len() as u64 - 4, ReqPhase::Body(1234)))
    );
}

#[test]
fn a_line_cut_at_its_end_is_not_read() {
    let (mut h, _) = CutHead::new(b"X: 1\r\nContent-Length: 12", &[], 0, true);
    // "Content-Length: 12" went on as "...345".
    assert_eq!(whole(&mut h, b"345\r\n\r\n"), Some((7, ReqPhase::Resync)));
    let (mut h, _) = CutHead::new(b"Transfer-Encoding: gzip, chunked\r\n", &[], 0, true);
    assert_eq!(
        whole(&mut h, b"\r\n"),
        Some((2, ReqPhase::Chunked(Chunked::default())))
    );
}

#[test]
fn a_blank_line_split_across_pieces_read_whole() {
    let (mut h, _) = CutHead::new(b"Content-Length: 5\r\n", &[], 0, true);
    assert_eq!(whole(&mut h, b"\r\nhello"), Some((2, ReqPhase::Body(5))));
    let (mut h, _) = CutHead::new(b"Content-Length: 5\r\nX: 1\r\n\r", &[], 0, true);
    assert_eq!(whole(&mut h, b"\nhello"), Some((1, ReqPhase::Body(5))));
}

#[test]
fn after_bytes_not_captured_the_body_is_skipped_only_as_far_as_it_surely_goes() {
    // 424 bytes of the piece were not captured: the head may end there.
    let (mut h, found) = CutHead::new(b"Content-Length: 5000\r\nCookie: c", &[], 424, true);
    assert_eq!(found, None);
    // The next piece shows a blank line 5 bytes in: the head's, or a
    // multipart part's in the body.
    assert_eq!(
        whole(&mut h, b"ccc\r\n\r\nrest"),
        Some((7, ReqPhase::Body(5000 - 424 - 7)))
    );
    // Without a length, pairing resyncs.
    let (mut h, _) = CutHead::new(b"Cookie: c", &[], 424, true);
    assert_eq!(whole(&mut h, b"\n\nXY"), Some((2, ReqPhase::Resync)));
}

#[test]
fn a_header_line_read_whole_shows_the_head_went_on() {
    let (mut h, _) = CutHead::new(b"Content-Length: 5000\r\nCookie: c", &[], 424, true);
    // "Accept" is a request header: the head went on to it, and ended
    // right after it.
    assert_eq!(
        whole(&mut h, b"ccc\r\nAccept: */*\r\n\r\nGET /phantom"),
        Some((20, ReqPhase::Body(5000)))
    );
    // A MIME part's header proves nothing: it may be the body's.
    let (mut h, _) = CutHead::new(b"Content-Length: 5000\r\nCookie: c", &[], 424, true);
    let part = b"ccc\r\nContent-Disposition: form-data\r\n\r\nx";
    let end = part.len() - 1;
    assert_eq!(
        whole(&mut h, part),
        Some((end as u64, ReqPhase::Body(5000 - 424 - end as u64)))
    );
}

#[test]
fn the_blank_line_in_a_tail_is_where_the_head_ended_at_the_latest() {
    // 1000 bytes not captured, then the tail "...\r\n\r\n": the head ended
    // at the piece's end, or earlier with a body ending in a blank line.
    let (_, found) = CutHead::new(
        b"Content-Length: 600\r\nCookie: c",
        b"cc\r\n\r\n",
        1000,
        true,
    );
    assert_eq!(found, Some((30 + 1000, ReqPhase::Resync)));
    let (_, found) = CutHead::new(
        b"Content-Length: 2000\r\nCookie: c",
        b"cc\r\n\r\n",
        1000,
        true,
    );
    assert_eq!(found, Some((31 + 1000, ReqPhase::Body(1000))));
}
