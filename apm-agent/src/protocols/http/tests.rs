use super::*;

#[test]
fn request_line_method_path_and_framing() {
    let r = parse_request(
        b"POST /api/users?token=secret HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
    )
    .expect("parse");
    assert_eq!(r.method, Method::Post);
    assert_eq!(r.path, "/api/users");
    assert_eq!(r.head_len, Some(69));
    assert_eq!(r.body, Framing::Length(5));
    assert!(!r.http10);
}

#[test]
fn absolute_and_authority_form_targets_keep_only_the_path() {
    let path = |line: &str| {
        parse_request(format!("{line} HTTP/1.1\r\n\r\n").as_bytes())
            .map(|r| r.path.to_owned())
            .expect("parse")
    };
    assert_eq!(path("GET http://bob:pw@example.com:8080/x/y?k=v"), "/x/y");
    assert_eq!(path("GET HTTPS://example.com"), "/");
    assert_eq!(path("GET http://u:p?ss@host/x"), "/");
    assert_eq!(path("CONNECT db.internal:5432"), "");
    assert_eq!(path("OPTIONS *"), "*");
    assert_eq!(path("GET /a#frag"), "/a");
}

#[test]
fn status_codes_outside_100_to_599_are_not_http() {
    for line in [
        "HTTP/1.1 000 X",
        "HTTP/1.1 099 X",
        "HTTP/1.1 600 X",
        "HTTP/1.1 999 X",
    ] {
        let full = format!("{line}\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(
            parse_response(full.as_bytes()).map(|r| r.status),
            Err(ParseError::NotHttp),
            "{line}"
        );
        // Cut before the end of the head too.
        assert_eq!(
            parse_response(line.as_bytes()).map(|r| r.status),
            Err(ParseError::NotHttp),
            "{line}"
        );
    }
    assert_eq!(
        parse_response(b"HTTP/1.1 599 X\r\n\r\n").map(|r| r.status),
        Ok(599)
    );
}

#[test]
fn unknown_methods_become_other() {
    let r = parse_request(b"PROPFIND /dav HTTP/1.1\r\n\r\n").expect("parse");
    assert_eq!(r.method.as_str(), "_OTHER");
    assert_eq!(Method::parse("get"), Method::Other);
}

#[test]
fn split_request_line_is_incomplete_or_partial() {
    // Cut inside the method: the rest may follow (Go reads one byte
    // alone); a token that runs on too long, or another byte, is not HTTP.
    assert_eq!(parse_request(b"G"), Err(ParseError::Incomplete));
    assert_eq!(parse_request(b"GE"), Err(ParseError::Incomplete));
    assert_eq!(
        parse_request(b"GETGETGETGETGETGET"),
        Err(ParseError::NotHttp)
    );
    assert_eq!(parse_request(b"Ge"), Err(ParseError::NotHttp));
    // Cut inside the path: method and visible path.
    let r = parse_request(b"GET /very/long/pa").expect("partial");
    assert_eq!(
        (r.method, r.path, r.head_len),
        (Method::Get, "/very/long/pa", None)
    );
    // Line complete, headers cut: head_len unknown.
    let r = parse_request(b"GET /a HTTP/1.1\r\nHost: x\r\nUser-Ag").expect("partial");
    assert_eq!((r.path, r.head_len), ("/a", None));
}

#[test]
fn garbage_is_not_http() {
    for g in [
        &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"[..],
        b"*3\r\n$3\r\nSET\r\n",
        b"get / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
        b"",
    ] {
        assert!(parse_request(g).is_err(), "{g:?}");
    }
    assert_eq!(parse_response(b"garbage"), Err(ParseError::NotHttp));
    assert_eq!(
        parse_response(b"HTTP/1.1 9999 X\r\n\r\n"),
        Err(ParseError::NotHttp)
    );
}

#[test]
fn http10_and_connection_close() {
    let r = parse_request(b"GET / HTTP/1.0\r\n\r\n").expect("parse");
    assert!(r.http10);
    let resp =
        parse_response(b"HTTP/1.0 200 OK\r\nContent-Type: text/html\r\n\r\n<html>").expect("parse");
    assert!(resp.connection_close);
    assert_eq!(resp.body, Framing::Close);
    let resp =
        parse_response(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")
            .expect("parse");
    assert!(resp.connection_close);
    assert_eq!(resp.body, Framing::Length(2));
}

#[test]
fn response_framing() {
    let r = parse_response(b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\n").expect("parse");
    assert_eq!(
        (r.status, r.head_len, r.body),
        (404, Some(45), Framing::Length(9))
    );
    let r = parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n")
        .expect("parse");
    assert_eq!(r.body, Framing::Chunked);
    // Head cut by the capture: status known, framing not.
    let r = parse_response(b"HTTP/1.1 500 Internal Server Error\r\nServer: ngi").expect("parse");
    assert_eq!((r.status, r.head_len), (500, None));
    assert_eq!(parse_response(b"HTTP/1"), Err(ParseError::Incomplete));
    assert!(bodyless(Method::Head, 200));
    assert!(bodyless(Method::Get, 304));
    assert!(!bodyless(Method::Get, 200));
}

#[test]
fn pipelined_requests_parse_one_after_another() {
    let batch = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b?x=1 HTTP/1.1\r\nHost: x\r\n\r\nHEAD /c HTTP/1.1\r\n\r\n";
    let mut off = 0;
    let mut seen = Vec::new();
    while off < batch.len() {
        let r = parse_request(&batch[off..]).expect("parse");
        seen.push((r.method, r.path.to_owned()));
        off += r.head_len.expect("complete");
    }
    assert_eq!(
        seen,
        vec![
            (Method::Get, "/a".to_owned()),
            (Method::Get, "/b".to_owned()),
            (Method::Head, "/c".to_owned())
        ]
    );
}

#[test]
fn heads_with_many_headers_are_still_framed() {
    // 100 headers before Content-Length: more than a fixed header array
    // holds, framed all the same; no header's value is returned.
    let mut head = String::from("HTTP/1.1 200 OK\r\n");
    for i in 0..100 {
        head.push_str(&format!("X-Trace-{i}: secret-{i}\r\n"));
    }
    head.push_str("Content-Length: 7\r\n\r\n");
    let r = parse_response(head.as_bytes()).expect("parse");
    assert_eq!((r.head_len, r.body), (Some(head.len()), Framing::Length(7)));
    let req = format!(
        "POST /x HTTP/1.1\r\n{}",
        &head["HTTP/1.1 200 OK\r\n".len()..]
    );
    let r = parse_request(req.as_bytes()).expect("parse");
    assert_eq!((r.head_len, r.body), (Some(req.len()), Framing::Length(7)));
}

#[test]
fn a_bad_header_line_after_a_good_first_line_is_not_http() {
    assert_eq!(
        parse_request(b"GET / HTTP/1.1\r\nHost x\r\n\r\n"),
        Err(ParseError::NotHttp)
    );
    assert_eq!(
        parse_response(b"HTTP/1.1 200 OK\r\n\x00\x01: x\r\n\r\n"),
        Err(ParseError::NotHttp)
    );
}

#[test]
fn a_traceparent_header_is_read_and_nothing_else_is() {
    let req = b"GET /order/1 HTTP/1.1\r\nHost: 127.0.0.1:8000\r\ntraceparent: 00-000000000000000000000000abc00001-0000000000005001-01\r\nConnection: close\r\n\r\n";
    let r = parse_request(req).expect("request");
    let t = r.trace.expect("traceparent");
    assert_eq!(t.trace_id[12..], [0xab, 0xc0, 0x00, 0x01]);
    assert_eq!(t.parent_id[6..], [0x50, 0x01]);
    assert!(t.sampled);
}
