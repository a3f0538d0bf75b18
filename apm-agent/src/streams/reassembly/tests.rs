use super::*;

const NEW: Verdict = Verdict::New {
    skip: 0,
    gap: false,
};

fn accept(r: &mut Reassembly, conn: u64, dir: u8, seq: u32, len: u32, ts_ns: u64) -> Verdict {
    place(
        r,
        conn,
        dir,
        PacketHeader {
            seq,
            len,
            ts_ns,
            ..PacketHeader::default()
        },
    )
}

/// A segment acknowledging `ack` of the other direction.
fn acking(r: &mut Reassembly, conn: u64, dir: u8, seq: u32, len: u32, ack: u32) -> Verdict {
    let flags = tcp_flags::ACK;
    place(
        r,
        conn,
        dir,
        PacketHeader {
            seq,
            len,
            ack,
            flags,
            ..PacketHeader::default()
        },
    )
}

fn place(r: &mut Reassembly, conn: u64, dir: u8, header: PacketHeader) -> Verdict {
    let piece = Piece {
        header: &header,
        data: &[],
    };
    r.accept(conn, dir, &piece, |_| true)
}

/// Every held segment `ready` hands out now: (seq, skip, gap).
fn drain(r: &mut Reassembly, conn: u64, dir: u8) -> Vec<(u32, u32, bool)> {
    std::iter::from_fn(|| r.ready(conn, dir))
        .map(|(h, skip, gap)| (h.header.seq, skip, gap))
        .collect()
}

#[test]
fn in_order_segments_are_new_and_repeats_are_duplicates() {
    let mut r = Reassembly::new(8);
    assert_eq!(accept(&mut r, 1, 0, 1000, 10, 0), NEW);
    assert_eq!(accept(&mut r, 1, 0, 1010, 5, 1), NEW);
    // A retransmission of the first segment.
    assert_eq!(accept(&mut r, 1, 0, 1000, 10, 2), Verdict::Duplicate);
    // The other direction has its own numbering.
    assert_eq!(accept(&mut r, 1, 1, 7, 3, 3), NEW);
}

#[test]
fn overlaps_are_trimmed() {
    let mut r = Reassembly::new(8);
    accept(&mut r, 1, 0, 100, 10, 0);
    assert_eq!(
        accept(&mut r, 1, 0, 105, 10, 1),
        Verdict::New {
            skip: 5,
            gap: false
        }
    );
}

#[test]
fn a_retransmission_fills_the_hole_and_the_held_segments_follow_in_order() {
    let mut r = Reassembly::new(8);
    accept(&mut r, 1, 0, 100, 10, 0);
    // 110..120 is lost; 120.. and 130.. arrive first, 130 twice.
    assert_eq!(accept(&mut r, 1, 0, 130, 10, 2), Verdict::Held);
    assert_eq!(accept(&mut r, 1, 0, 120, 10, 1), Verdict::Held);
    assert_eq!(accept(&mut r, 1, 0, 130, 10, 3), Verdict::Duplicate);
    assert!(drain(&mut r, 1, 0).is_empty());
    assert!(r.holds_any());
    // The retransmission: new, then both held ones, without a gap.
    assert_eq!(accept(&mut r, 1, 0, 110, 10, 4), NEW);
    assert_eq!(drain(&mut r, 1, 0), vec![(120, 0, false), (130, 0, false)]);
    assert!(!r.holds_any());
    assert_eq!(r.held_bytes(), 0);
    assert_eq!(accept(&mut r, 1, 0, 140, 1, 5), NEW);
}

#[test]
fn a_retransmission_covering_held_segments_makes_them_duplicates() {
    let mut r = Reassembly::new(8);
    accept(&mut r, 1, 1, 0, 10, 0);
    assert_eq!(accept(&mut r, 1, 1, 20, 10, 1), Verdict::Held);
    assert_eq!(accept(&mut r, 1, 1, 25, 10, 2), Verdict::Held);
    // One retransmission of 10..30.
    assert_eq!(accept(&mut r, 1, 1, 10, 20, 3), NEW);
    // 20..30 is covered; 25..35 is trimmed to its last 5 bytes.
    assert_eq!(drain(&mut r, 1, 1), vec![(25, 5, false)]);
}

#[test]
fn a_hole_open_past_the_window_is_a_gap() {
    let mut r = Reassembly::new(8);
    accept(&mut r, 1, 0, 0, 10, 0);
    assert_eq!(accept(&mut r, 1, 0, 20, 10, 1_000), Verdict::Held);
    assert_eq!(accept(&mut r, 1, 0, 30, 10, 2_000), Verdict::Held);
    assert!(r.expire(500_000_000, REORDER_WINDOW_NS).is_empty());
    assert!(!r.has_expired(500_000_000, REORDER_WINDOW_NS));
    let now = 1_000 + REORDER_WINDOW_NS + 1;
    assert!(r.has_expired(now, REORDER_WINDOW_NS));
    assert_eq!(r.expire(now, REORDER_WINDOW_NS), vec![(1, 0)]);
    assert_eq!(drain(&mut r, 1, 0), vec![(20, 0, true), (30, 0, false)]);
    // The retransmission comes too late: a duplicate.
    assert_eq!(accept(&mut r, 1, 0, 10, 10, now), Verdict::Duplicate);
    assert!(!r.holds_any());
}

#[test]
fn too_many_held_segments_declare_the_gap_at_once() {
    let mut r = Reassembly::new(8);
    accept(&mut r, 1, 0, 0, 1, 0);
    for i in 0..=MAX_HELD as u32 {
        assert_eq!(accept(&mut r, 1, 0, 10 + i, 1, 1), Verdict::Held);
    }
    let out = drain(&mut r, 1, 0);
    assert_eq!(out.len(), MAX_HELD + 1);
    assert_eq!(out[0], (10, 0, true));
    assert!(out[1..].iter().all(|&(_, _, gap)| !gap));
}

#[test]
fn a_bare_fin_behind_a_hole_waits_for_the_data() {
    let mut r = Reassembly::new(8);
    accept(&mut r, 1, 1, 0, 10, 0);
    assert_eq!(accept(&mut r, 1, 1, 20, 0, 1), Verdict::Held);
    assert_eq!(accept(&mut r, 1, 1, 10, 10, 2), NEW);
    assert_eq!(drain(&mut r, 1, 1), vec![(20, 0, false)]);
}

#[test]
fn after_the_close_retransmissions_are_dropped() {
    let mut r = Reassembly::new(8);
    accept(&mut r, 1, 1, 0, 10, 0);
    assert_eq!(accept(&mut r, 1, 1, 30, 10, 1), Verdict::Held);
    r.close(1);
    assert!(!r.holds_any());
    assert!(r.is_closed(1));
    assert_eq!(accept(&mut r, 1, 1, 0, 10, 2), Verdict::Duplicate);
    assert_eq!(accept(&mut r, 1, 0, 0, 10, 2), Verdict::Duplicate);
    r.sweep(10_000_000_000, 1_000_000_000);
    assert!(r.is_empty());
}

#[test]
fn sequence_numbers_wrap() {
    let mut r = Reassembly::new(8);
    accept(&mut r, 1, 1, u32::MAX - 4, 10, 0);
    assert_eq!(accept(&mut r, 1, 1, 5, 10, 1), NEW);
    assert_eq!(
        accept(&mut r, 1, 1, u32::MAX - 4, 10, 2),
        Verdict::Duplicate
    );
    // A hole across the wrap.
    assert_eq!(accept(&mut r, 1, 1, 25, 5, 3), Verdict::Held);
    assert_eq!(accept(&mut r, 1, 1, 15, 10, 4), NEW);
    assert_eq!(drain(&mut r, 1, 1), vec![(25, 0, false)]);
}

#[test]
fn state_is_bounded() {
    let mut r = Reassembly::new(2);
    accept(&mut r, 1, 0, 0, 1, 0);
    accept(&mut r, 2, 0, 0, 1, 0);
    // Full of fresh streams: the third is passed on unchecked.
    assert_eq!(accept(&mut r, 3, 0, 0, 1, 10), NEW);
    assert_eq!(r.len(), 2);
    // Two seconds later the least recently seen is evicted for it.
    accept(&mut r, 2, 0, 1, 1, 2_000_000_000);
    accept(&mut r, 3, 0, 0, 1, 2_000_000_001);
    assert_eq!(r.len(), 2);
    assert!(r.knows(2) && r.knows(3) && !r.knows(1));
}

#[test]
fn a_hole_the_peer_acknowledged_is_a_gap_at_once() {
    let mut r = Reassembly::new(8);
    // Requests 0..10 seen; 10..20 lost from the ring; 20..30 held.
    accept(&mut r, 1, 0, 0, 10, 0);
    assert_eq!(accept(&mut r, 1, 0, 20, 10, 1), Verdict::Held);
    // A response acknowledging 20: the server has 10..20.
    assert_eq!(acking(&mut r, 1, 1, 500, 10, 20), NEW);
    assert_eq!(drain(&mut r, 1, 0), vec![(20, 0, true)]);
    // Acknowledged first, then the hole shows: a gap without holding.
    assert_eq!(acking(&mut r, 1, 1, 510, 10, 40), NEW);
    assert_eq!(
        accept(&mut r, 1, 0, 35, 5, 2),
        Verdict::New { skip: 0, gap: true }
    );
}

#[test]
fn an_acknowledgment_short_of_the_hole_keeps_waiting() {
    let mut r = Reassembly::new(8);
    accept(&mut r, 1, 0, 0, 10, 0);
    assert_eq!(accept(&mut r, 1, 0, 20, 10, 1), Verdict::Held);
    // The server has only 0..10: the retransmission is still to come.
    assert_eq!(acking(&mut r, 1, 1, 500, 10, 10), NEW);
    assert!(drain(&mut r, 1, 0).is_empty());
    assert_eq!(accept(&mut r, 1, 0, 10, 10, 2), NEW);
    assert_eq!(drain(&mut r, 1, 0), vec![(20, 0, false)]);
}

fn first(r: &mut Reassembly, conn: u64, dir: u8, seq: u32, data: &[u8]) -> Verdict {
    let header = PacketHeader {
        seq,
        len: data.len() as u32,
        ..PacketHeader::default()
    };
    r.accept(
        conn,
        dir,
        &Piece {
            header: &header,
            data,
        },
        |d| d.starts_with(b"GET"),
    )
}

#[test]
fn a_first_segment_that_starts_no_message_waits_for_an_earlier_one() {
    let mut r = Reassembly::new(8);
    // The request's first segment was lost; its second comes first.
    assert_eq!(first(&mut r, 1, 0, 1010, b"rest of head"), Verdict::Held);
    assert_eq!(first(&mut r, 1, 0, 1000, b"GET /a HTT"), NEW);
    assert_eq!(drain(&mut r, 1, 0), vec![(1010, 0, false)]);
    // A connection joined mid-stream: after the window, its first bytes
    // start the direction (the parsers resync).
    assert_eq!(first(&mut r, 2, 0, 50, b"body"), Verdict::Held);
    assert_eq!(first(&mut r, 2, 0, 54, b"more"), Verdict::Held);
    assert_eq!(
        r.expire(REORDER_WINDOW_NS + 1, REORDER_WINDOW_NS),
        vec![(2, 0)]
    );
    assert_eq!(drain(&mut r, 2, 0), vec![(50, 0, false), (54, 0, false)]);
}

#[test]
fn the_other_sides_acknowledgment_says_where_a_direction_starts() {
    let mut r = Reassembly::new(8);
    // The request acknowledges the server's first byte, 700.
    assert_eq!(acking(&mut r, 1, 0, 0, 10, 700), NEW);
    // The response's first segment is lost: its second is held.
    assert_eq!(first(&mut r, 1, 1, 800, b"body"), Verdict::Held);
    let mut head = b"HTTP/1.1 200 OK".to_vec();
    head.resize(100, b'x');
    assert_eq!(first(&mut r, 1, 1, 700, &head), NEW);
    assert_eq!(drain(&mut r, 1, 1), vec![(800, 0, false)]);
}

const MS: u64 = 1_000_000;

#[test]
fn a_hole_behind_a_filled_one_is_timed_from_its_own_start() {
    let mut r = Reassembly::new(8);
    accept(&mut r, 1, 0, 0, 10, 0);
    // Hole 10..20 (20 held at 0 ms), hole 30..40 (40 held at 900 ms).
    assert_eq!(accept(&mut r, 1, 0, 20, 10, 0), Verdict::Held);
    assert_eq!(accept(&mut r, 1, 0, 40, 10, 900 * MS), Verdict::Held);
    assert_eq!(accept(&mut r, 1, 0, 10, 10, 950 * MS), NEW);
    assert_eq!(drain(&mut r, 1, 0), vec![(20, 0, false)]);
    // At 1 s the second hole has been open 100 ms: not a gap yet.
    assert!(
        r.expire(REORDER_WINDOW_NS + 1, REORDER_WINDOW_NS)
            .is_empty()
    );
    assert_eq!(accept(&mut r, 1, 0, 30, 10, REORDER_WINDOW_NS + 2), NEW);
    assert_eq!(drain(&mut r, 1, 0), vec![(40, 0, false)]);
}

#[test]
fn an_acknowledgment_skips_only_what_it_covers() {
    let mut r = Reassembly::new(8);
    accept(&mut r, 1, 0, 100, 10, 0);
    // Holes 110..150 and 160..200.
    assert_eq!(accept(&mut r, 1, 0, 150, 10, 1), Verdict::Held);
    assert_eq!(accept(&mut r, 1, 0, 200, 10, 2), Verdict::Held);
    // The server has 110..160: the first hole is lost for good, the second
    // is still to be retransmitted.
    assert_eq!(acking(&mut r, 1, 1, 0, 5, 160), NEW);
    assert_eq!(drain(&mut r, 1, 0), vec![(150, 0, true)]);
    assert_eq!(accept(&mut r, 1, 0, 160, 40, 3), NEW);
    assert_eq!(drain(&mut r, 1, 0), vec![(200, 0, false)]);
}

#[test]
fn a_hole_partly_acknowledged_before_it_shows_waits_for_the_rest() {
    let mut r = Reassembly::new(8);
    accept(&mut r, 1, 0, 90, 10, 0);
    assert_eq!(acking(&mut r, 1, 1, 0, 5, 150), NEW);
    // 100..150 reached the server unrecorded; 150..200 is in flight.
    assert_eq!(accept(&mut r, 1, 0, 200, 10, 1), Verdict::Held);
    assert_eq!(
        accept(&mut r, 1, 0, 150, 50, 2),
        Verdict::New { skip: 0, gap: true }
    );
    assert_eq!(drain(&mut r, 1, 0), vec![(200, 0, false)]);
}

#[test]
fn an_evicted_stream_is_reported_and_its_held_bytes_released() {
    let mut r = Reassembly::new(1);
    accept(&mut r, 1, 0, 0, 10, 0);
    assert_eq!(accept(&mut r, 1, 0, 20, 10, 1), Verdict::Held);
    assert!(r.held_bytes() > 0);
    accept(&mut r, 2, 0, 0, 10, REORDER_WINDOW_NS + 2);
    assert_eq!(r.take_evicted(), Some(1));
    assert_eq!(r.take_evicted(), None);
    assert!(!r.holds_any());
    assert_eq!(r.held_bytes(), 0);
}

#[test]
fn held_bare_fins_count_against_the_budget() {
    let mut r = Reassembly::new(8);
    accept(&mut r, 1, 0, 0, 10, 0);
    let fin = PacketHeader {
        seq: 100,
        flags: tcp_flags::FIN,
        ..PacketHeader::default()
    };
    assert_eq!(place(&mut r, 1, 0, fin), Verdict::Held);
    assert!(r.held_bytes() >= std::mem::size_of::<Held>());
}

#[test]
fn expiry_is_looked_at_once_a_millisecond() {
    let mut r = Reassembly::new(8);
    accept(&mut r, 1, 0, 0, 10, 0);
    assert_eq!(accept(&mut r, 1, 0, 20, 10, 0), Verdict::Held);
    let late = REORDER_WINDOW_NS + 1;
    assert!(!r.has_expired(late - 1, REORDER_WINDOW_NS));
    // Asked again within the millisecond: not looked at.
    assert!(!r.has_expired(late + 10, REORDER_WINDOW_NS));
    assert!(r.has_expired(late + MS, REORDER_WINDOW_NS));
}
