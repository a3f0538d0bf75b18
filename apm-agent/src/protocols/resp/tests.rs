use super::*;

/// Parses `pieces` (each fully captured) into (kind, outcome, words,
/// children) per frame.
fn frames(inline: bool, pieces: &[&[u8]]) -> Result<Vec<Frame>, Desync> {
    let mut p = Parser::new(inline);
    let mut out = Vec::new();
    for piece in pieces {
        p.feed(piece, piece.len() as u64, || {}, |f| out.push(f.clone()))?;
    }
    Ok(out)
}

fn words(f: &Frame) -> (Option<&[u8]>, Option<&[u8]>) {
    (f.word(0), f.word(1))
}

#[test]
fn commands_split_anywhere_parse_the_same() {
    let cmd =
        b"*3\r\n$3\r\nSET\r\n$5\r\nmykey\r\n$7\r\nmyvalue\r\n*2\r\n$3\r\nGET\r\n$5\r\nmykey\r\n";
    let whole = frames(true, &[cmd]).expect("parse");
    assert_eq!(whole.len(), 2);
    assert_eq!(words(&whole[0]), (Some(&b"SET"[..]), Some(&b"mykey"[..])));
    assert_eq!(words(&whole[1]).0, Some(&b"GET"[..]));
    for cut in 1..cmd.len() {
        let split = frames(true, &[&cmd[..cut], &cmd[cut..]]).expect("parse split");
        assert_eq!(split.len(), 2, "cut at {cut}");
        assert_eq!(words(&split[0]), words(&whole[0]), "cut at {cut}");
        assert_eq!(words(&split[1]), words(&whole[1]), "cut at {cut}");
    }
    // Byte by byte.
    let bytes: Vec<&[u8]> = cmd.chunks(1).collect();
    assert_eq!(frames(true, &bytes).expect("bytes").len(), 2);
}

#[test]
fn inline_commands_and_their_words() {
    let f = frames(true, &[b"PING\r\n", b"set  k v\n", b"\r\n", b"GET k\r\n"]).expect("inline");
    assert_eq!(f.len(), 3);
    assert_eq!(f[0].kind, b'i');
    assert_eq!(words(&f[0]), (Some(&b"PING"[..]), None));
    assert_eq!(words(&f[1]), (Some(&b"set"[..]), Some(&b"k"[..])));
    // A reply parser does not take inline text.
    assert_eq!(frames(false, &[b"PING\r\n"]).err(), Some(Desync::Invalid));
}

#[test]
fn replies_report_nil_empty_zero_and_errors() {
    let f = frames(
        false,
        &[b"$-1\r\n*-1\r\n_\r\n*0\r\n%0\r\n:0\r\n:12\r\n-ERR wrong type\r\n!5\r\noops!\r\n$3\r\nabc\r\n+OK\r\n,3.14\r\n#t\r\n(123\r\n"],
    )
    .expect("replies");
    let outcomes: Vec<Outcome> = f.iter().map(|f| f.outcome).collect();
    use Outcome::*;
    assert_eq!(
        outcomes,
        vec![
            Nil, Nil, Nil, Empty, Empty, Zero, Value, Error, Error, Value, Value, Value, Value,
            Value
        ]
    );
}

#[test]
fn nested_aggregates_count_as_one_frame_with_children() {
    // EXEC's reply: +OK, a nil, a nested array, an error, an integer 0.
    let exec = b"*5\r\n+OK\r\n$-1\r\n*2\r\n*1\r\n:1\r\n$1\r\nx\r\n-ERR no\r\n:0\r\n";
    let f = frames(false, &[exec, b"+PONG\r\n"]).expect("nested");
    assert_eq!(f.len(), 2);
    use Outcome::*;
    assert_eq!(f[0].children, vec![Value, Nil, Value, Error, Zero]);
    assert_eq!(f[0].word(0), Some(&b"OK"[..]));
    assert_eq!(f[1].word(0), Some(&b"PONG"[..]));
}

#[test]
fn arity_and_integer_children() {
    let cmds = frames(
        true,
        &[
            b"*4\r\n$9\r\nSUBSCRIBE\r\n$1\r\na\r\n$1\r\nb\r\n$1\r\nc\r\n",
            b"unsubscribe x  y\r\n",
        ],
    )
    .expect("commands");
    assert_eq!((cmds[0].arity(), cmds[1].arity()), (4, 3));
    let confirmations =
        b"*3\r\n$11\r\nunsubscribe\r\n$-1\r\n:0\r\n>3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:12\r\n";
    let f = frames(false, &[confirmations, b":5\r\n"]).expect("confirmations");
    assert_eq!((f[0].int, f[1].int), (Some(0), Some(12)));
    assert_eq!(f[0].word(1), None);
    // A top-level integer is not a child.
    assert_eq!(f[2].int, None);
}

#[test]
fn resp3_maps_sets_pushes_and_attributes() {
    let hello = b"%2\r\n$6\r\nserver\r\n$5\r\nredis\r\n$5\r\nproto\r\n:3\r\n";
    let push = b">3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$2\r\nhi\r\n";
    let set = b"~2\r\n+a\r\n+b\r\n";
    // An attribute before a reply is not a frame of its own.
    let attr = b"|1\r\n+key-popularity\r\n%1\r\n$1\r\na\r\n,0.19\r\n:7\r\n";
    let f = frames(false, &[hello, push, set, attr]).expect("resp3");
    assert_eq!(f.len(), 4);
    assert_eq!(f[0].kind, b'%');
    assert_eq!(f[0].children.len(), 4);
    assert_eq!(f[1].kind, b'>');
    assert_eq!(f[1].word(0), Some(&b"message"[..]));
    assert_eq!(f[2].children.len(), 2);
    assert_eq!(f[3].kind, b':');
    assert_eq!(f[3].outcome, Outcome::Value);
}

#[test]
fn huge_bulk_strings_cut_by_the_capture_are_skipped_by_length() {
    // SET k <5000 bytes>, then GET k; the capture saw 1024 bytes of the
    // first piece only.
    let mut piece = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5000\r\n".to_vec();
    piece.extend(std::iter::repeat_n(b'v', 5000));
    piece.extend_from_slice(b"\r\n");
    let next = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n";
    let mut p = Parser::new(true);
    let mut names = Vec::new();
    let mut push = |f: &Frame| names.push(f.word(0).map(<[u8]>::to_vec));
    p.feed(&piece[..1024], piece.len() as u64, || {}, &mut push)
        .expect("skips the uncaptured value");
    p.feed(next, next.len() as u64, || {}, &mut push)
        .expect("next");
    assert_eq!(names, vec![Some(b"SET".to_vec()), Some(b"GET".to_vec())]);

    // A frame header in uncaptured bytes cannot be followed.
    let mut both = piece.clone();
    both.extend_from_slice(next);
    let mut p = Parser::new(true);
    assert_eq!(
        p.feed(&both[..1024], both.len() as u64, || {}, |_| {}),
        Err(Desync::Truncated)
    );
}

#[test]
fn frame_starts_are_reported_once_per_frame() {
    let mut p = Parser::new(true);
    let mut starts = 0;
    let mut done = 0;
    for piece in [&b"*1\r\n$4\r\nPI"[..], b"NG\r\n*1\r\n", b"$4\r\nPING\r\n"] {
        p.feed(piece, piece.len() as u64, || starts += 1, |_| done += 1)
            .expect("ping");
    }
    assert_eq!((starts, done), (2, 2));
    assert!(p.idle());
}

#[test]
fn hostile_input_is_refused_not_trusted() {
    for bad in [
        &b"*abc\r\n"[..],
        b"$99999999999\r\n",
        b"?\r\n",
        b"*1\r\n\x00",
        b"$?\r\n",
    ] {
        assert_eq!(
            frames(false, &[bad]).err(),
            Some(Desync::Invalid),
            "{bad:?}"
        );
    }
    // Deep nesting is bounded.
    let deep = b"*1\r\n".repeat(MAX_DEPTH + 1);
    assert_eq!(frames(false, &[&deep]).err(), Some(Desync::Invalid));
    // A long simple string keeps a bounded prefix and still ends.
    let mut long = b"+".to_vec();
    long.extend(std::iter::repeat_n(b'x', 10_000));
    long.extend_from_slice(b"\r\n:1\r\n");
    assert_eq!(frames(false, &[&long]).expect("long").len(), 2);
}

#[test]
fn command_detection() {
    assert!(starts_like_command(b"*1\r\n$4\r\nPING\r\n"));
    assert!(starts_like_command(b"PING\r\n"));
    assert!(starts_like_command(b"get k\r\n"));
    assert!(!starts_like_command(b"GET / HTTP/1.1\r\n"));
    // An HTTP client writing its request line in pieces: undecided, so HTTP.
    assert!(!starts_like_command(b"GET "));
    assert!(!starts_like_command(b"GET /users/7"));
    assert!(!starts_like_command(b"HELLOWORLD"));
    assert!(!starts_like_command(b"*x"));
    assert!(starts_like_reply(b"+OK\r\n"));
    assert!(!starts_like_reply(b"HTTP/1.1 200 OK\r\n"));
}

#[test]
fn numbers_read_as_str_parse_reads_them() {
    let std = |line: &[u8]| {
        std::str::from_utf8(line)
            .ok()
            .and_then(|s| s.parse::<i64>().ok())
    };
    let mut cases: Vec<Vec<u8>> = [
        "",
        "+",
        "-",
        "0",
        "-0",
        "+0",
        "42",
        "+42",
        "-42",
        "007",
        "1 2",
        " 1",
        "1 ",
        "+-1",
        "--1",
        "1-",
        "0x10",
        "9223372036854775807",
        "9223372036854775808",
        "-9223372036854775808",
        "-9223372036854775809",
        "99999999999999999999",
        "١",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    cases.extend([
        vec![b'1', 0xff],
        vec![b'-', 0xc3, 0xa9],
        vec![b'/'],
        vec![b':'],
    ]);
    for line in &cases {
        assert_eq!(
            number(line).ok(),
            std(line),
            "{:?}",
            String::from_utf8_lossy(line)
        );
    }
}
