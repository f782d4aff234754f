//! The connection state machine: framing, persistence, limits, errors.

use net::http::{Conn, HeaderName, Limits, Method, Next, ParseError, Request};

/// An owned copy of a request, so tests can collect them.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Owned {
    method: Method,
    path: String,
    query: Option<String>,
    minor: u8,
    authorization: Option<String>,
    content_type: Option<String>,
    body: Vec<u8>,
    keep_alive: bool,
}

impl From<&Request<'_>> for Owned {
    fn from(r: &Request<'_>) -> Self {
        Owned {
            method: r.method,
            path: r.path.into(),
            query: r.query.map(Into::into),
            minor: r.minor_version,
            authorization: r.authorization.map(Into::into),
            content_type: r.content_type.map(Into::into),
            body: r.body.to_vec(),
            keep_alive: r.keep_alive,
        }
    }
}

/// What a connection yields, owned.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Ev {
    Req(Owned),
    Err(ParseError),
    Closed,
}

/// Drains every event after a feed (stops at NeedMore; Closed is reported once).
fn drain(conn: &mut Conn, evs: &mut Vec<Ev>) {
    loop {
        match conn.next_request() {
            Next::Request(r) => evs.push(Ev::Req((&r).into())),
            Next::Error(e) => evs.push(Ev::Err(e)),
            Next::NeedMore => return,
            Next::Closed => {
                if evs.last() != Some(&Ev::Closed) {
                    evs.push(Ev::Closed);
                }
                return;
            }
        }
    }
}

/// Feeds `chunks` one after another (draining in between) and returns all events.
fn run_chunks(limits: Limits, chunks: &[&[u8]]) -> Vec<Ev> {
    let mut conn = Conn::new(limits);
    let mut evs = Vec::new();
    for chunk in chunks {
        let mut rest = *chunk;
        loop {
            let n = conn.feed(rest);
            rest = &rest[n..];
            drain(&mut conn, &mut evs);
            if rest.is_empty() {
                break;
            }
            assert!(n > 0, "feed made no progress");
        }
    }
    evs
}

fn run(bytes: &[u8]) -> Vec<Ev> {
    run_chunks(Limits::default(), &[bytes])
}

fn req(method: Method, path: &str) -> Owned {
    Owned {
        method,
        path: path.into(),
        query: None,
        minor: 1,
        authorization: None,
        content_type: None,
        body: Vec::new(),
        keep_alive: true,
    }
}

#[test]
fn single_get() {
    let evs = run(b"GET /v1/cpus/3?verbose=1&x HTTP/1.1\r\nHost: hv\r\nAuthorization: Bearer t0k\r\nAccept: */*\r\n\r\n");
    let mut want = req(Method::Get, "/v1/cpus/3");
    want.query = Some("verbose=1&x".into());
    want.authorization = Some("Bearer t0k".into());
    assert_eq!(evs, [Ev::Req(want)]);
}

#[test]
fn post_with_body() {
    let evs = run(b"POST /v1/cpus/1/online HTTP/1.1\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"a\":true}\n");
    let mut want = req(Method::Post, "/v1/cpus/1/online");
    want.content_type = Some("application/json".into());
    want.body = b"{\"a\":true}\n".to_vec();
    assert_eq!(evs, [Ev::Req(want)]);
}

#[test]
fn incomplete_body_waits() {
    let mut conn = Conn::new(Limits::default());
    conn.feed(b"POST /x HTTP/1.1\r\nContent-Length: 4\r\n\r\nab");
    assert_eq!(conn.next_request(), Next::NeedMore);
    conn.feed(b"cd");
    match conn.next_request() {
        Next::Request(r) => assert_eq!(r.body, b"abcd"),
        other => panic!("{other:?}"),
    }
    assert_eq!(conn.next_request(), Next::NeedMore);
    assert_eq!(conn.buffered(), 0);
}

const PIPELINE: &[u8] = b"GET /v1/health HTTP/1.1\r\nHost: a\r\n\r\n\
POST /v1/cpus/0/offline HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}\
GET /v1/cpus HTTP/1.1\r\nConnection: close\r\n\r\n\
GET /never HTTP/1.1\r\n\r\n";

fn pipeline_events() -> Vec<Ev> {
    let mut post = req(Method::Post, "/v1/cpus/0/offline");
    post.body = b"{}".to_vec();
    let mut last = req(Method::Get, "/v1/cpus");
    last.keep_alive = false;
    vec![
        Ev::Req(req(Method::Get, "/v1/health")),
        Ev::Req(post),
        Ev::Req(last),
        Ev::Closed,
    ]
}

#[test]
fn pipelined_requests_in_order_and_close_stops_reading() {
    assert_eq!(run(PIPELINE), pipeline_events());
}

#[test]
fn split_at_every_byte_boundary() {
    let want = pipeline_events();
    for i in 0..=PIPELINE.len() {
        let (a, b) = PIPELINE.split_at(i);
        assert_eq!(run_chunks(Limits::default(), &[a, b]), want, "split at {i}");
    }
    let bytes: Vec<&[u8]> = PIPELINE.chunks(1).collect();
    assert_eq!(run_chunks(Limits::default(), &bytes), want, "byte by byte");
}

#[test]
fn split_errors_at_every_byte_boundary() {
    let input: &[u8] = b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/2.0\r\n\r\nGET /c HTTP/1.1\r\n\r\n";
    let want = vec![
        Ev::Req(req(Method::Get, "/a")),
        Ev::Err(ParseError::UnsupportedVersion),
        Ev::Closed,
    ];
    for i in 0..=input.len() {
        let (a, b) = input.split_at(i);
        assert_eq!(run_chunks(Limits::default(), &[a, b]), want, "split at {i}");
    }
}

fn keep_alive_of(head: &str) -> bool {
    match run(head.as_bytes()).as_slice() {
        [Ev::Req(r), ..] => r.keep_alive,
        other => panic!("{other:?}"),
    }
}

#[test]
fn persistence() {
    assert!(keep_alive_of("GET / HTTP/1.1\r\n\r\n"));
    assert!(keep_alive_of(
        "GET / HTTP/1.1\r\nConnection: keep-alive\r\n\r\n"
    ));
    assert!(!keep_alive_of(
        "GET / HTTP/1.1\r\nConnection: close\r\n\r\n"
    ));
    assert!(!keep_alive_of(
        "GET / HTTP/1.1\r\nConnection: Upgrade, CLOSE\r\n\r\n"
    ));
    assert!(!keep_alive_of(
        "GET / HTTP/1.1\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n"
    ));
    assert!(!keep_alive_of("GET / HTTP/1.0\r\n\r\n"));
    assert!(keep_alive_of(
        "GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"
    ));
    assert!(!keep_alive_of(
        "GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n"
    ));
}

#[test]
fn http10_closes_after_first() {
    let evs = run(b"GET /a HTTP/1.0\r\n\r\nGET /b HTTP/1.0\r\n\r\n");
    let mut a = req(Method::Get, "/a");
    a.minor = 0;
    a.keep_alive = false;
    assert_eq!(evs, [Ev::Req(a), Ev::Closed]);
}

#[test]
fn closed_connection_swallows_input() {
    let mut conn = Conn::new(Limits::default());
    conn.feed(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert!(matches!(conn.next_request(), Next::Request(_)));
    assert!(conn.is_closed());
    assert_eq!(conn.feed(&[b'x'; 1_000_000]), 1_000_000);
    assert_eq!(conn.next_request(), Next::Closed);
    conn.reset();
    assert!(!conn.is_closed());
    conn.feed(b"GET /again HTTP/1.1\r\n\r\n");
    assert!(matches!(conn.next_request(), Next::Request(r) if r.path == "/again"));
}

fn first_error(bytes: &[u8]) -> ParseError {
    first_error_with(Limits::default(), bytes)
}

fn first_error_with(limits: Limits, bytes: &[u8]) -> ParseError {
    let evs = run_chunks(limits, &[bytes]);
    match evs.as_slice() {
        [Ev::Err(e), Ev::Closed] => *e,
        other => panic!("{other:?}"),
    }
}

#[test]
fn garbage_is_400_and_closes() {
    for g in [
        &b"\x00\x01\x02\r\n\r\n"[..],
        b"GET\r\n\r\n",
        b"GET / FOO/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nbad header\r\n\r\n",
        b"GET / HTTP/1.1\r\nX: a\x01b\r\n\r\n",
        b"G\xffT / HTTP/1.1\r\n\r\n",
        b"GET /a b HTTP/1.1\r\n\r\n",
    ] {
        assert_eq!(
            first_error(g),
            ParseError::Malformed,
            "{:?}",
            String::from_utf8_lossy(g)
        );
    }
}

#[test]
fn targets_must_be_paths() {
    assert_eq!(
        first_error(b"OPTIONS * HTTP/1.1\r\n\r\n"),
        ParseError::BadTarget
    );
    assert_eq!(
        first_error(b"GET http://hv/v1/health HTTP/1.1\r\n\r\n"),
        ParseError::BadTarget
    );
}

#[test]
fn versions() {
    assert_eq!(
        first_error(b"GET / HTTP/2.0\r\n\r\n"),
        ParseError::UnsupportedVersion
    );
    assert_eq!(
        first_error(b"GET / HTTP/1.2\r\n\r\n"),
        ParseError::UnsupportedVersion
    );
    assert_eq!(
        first_error(b"GET / HTTP/0.9\r\n\r\n"),
        ParseError::UnsupportedVersion
    );
    assert_eq!(
        first_error(b"GET / HTTP/x.y\r\n\r\n"),
        ParseError::Malformed
    );
}

#[test]
fn content_length_is_checked() {
    let bad = ParseError::BadHeader(HeaderName::ContentLength);
    for cl in ["abc", "-1", "+1", "", "1 2", "0x10", "1,1"] {
        let r = format!("POST / HTTP/1.1\r\nContent-Length: {cl}\r\n\r\n");
        assert_eq!(first_error(r.as_bytes()), bad, "{cl:?}");
    }
    assert_eq!(
        first_error(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"),
        bad
    );
    // Identical duplicates are allowed (RFC 9110 section 8.6).
    let evs = run(b"POST / HTTP/1.1\r\nContent-Length: 2\r\ncontent-length: 2\r\n\r\nab");
    assert!(matches!(evs.as_slice(), [Ev::Req(r)] if r.body == b"ab"));
}

#[test]
fn transfer_codings_are_refused() {
    assert_eq!(
        first_error(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        ),
        ParseError::ChunkedBody
    );
    assert_eq!(
        first_error(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, Chunked\r\nContent-Length: 3\r\n\r\n"
        ),
        ParseError::ChunkedBody
    );
    assert_eq!(
        first_error(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"),
        ParseError::UnsupportedTransferCoding
    );
}

#[test]
fn text_headers_must_be_utf8_and_single() {
    assert_eq!(
        first_error(b"GET / HTTP/1.1\r\nAuthorization: \xff\xfe\r\n\r\n"),
        ParseError::BadHeader(HeaderName::Authorization)
    );
    assert_eq!(
        first_error(b"GET / HTTP/1.1\r\nContent-Type: a\r\nContent-Type: b\r\n\r\n"),
        ParseError::BadHeader(HeaderName::ContentType)
    );
}

#[test]
fn default_limits() {
    let l = Limits::default();
    assert_eq!(
        (l.max_headers, l.max_head_bytes, l.max_body_bytes),
        (32, 8192, 65536)
    );
}

#[test]
fn header_count_limit_is_431() {
    let mut ok = String::from("GET / HTTP/1.1\r\n");
    for i in 0..32 {
        ok += &format!("X-{i}: v\r\n");
    }
    let too_many = format!("{ok}X-last: v\r\n\r\n");
    ok += "\r\n";
    assert!(matches!(run(ok.as_bytes()).as_slice(), [Ev::Req(_)]));
    assert_eq!(first_error(too_many.as_bytes()), ParseError::TooManyHeaders);
}

#[test]
fn head_size_limit_is_431() {
    let limits = Limits {
        max_head_bytes: 100,
        ..Limits::default()
    };
    // Exactly at the limit is fine.
    let mut at = String::from("GET / HTTP/1.1\r\nX: ");
    at += &"a".repeat(100 - at.len() - 4);
    at += "\r\n\r\n";
    assert_eq!(at.len(), 100);
    assert!(matches!(
        run_chunks(limits, &[at.as_bytes()]).as_slice(),
        [Ev::Req(_)]
    ));
    // One more byte, complete or not.
    let over = at.replacen("X: ", "X: a", 1);
    assert_eq!(
        first_error_with(limits, over.as_bytes()),
        ParseError::HeadTooLarge
    );
    assert_eq!(
        first_error_with(limits, &over.as_bytes()[..100]),
        ParseError::HeadTooLarge
    );
    // The default: a head that never ends is cut at 8 KiB, whole or dribbled in.
    let endless = [b"GET / HTTP/1.1\r\nX: ".as_slice(), &[b'a'; 9000]].concat();
    assert_eq!(first_error(&endless), ParseError::HeadTooLarge);
    let chunks: Vec<&[u8]> = endless.chunks(7).collect();
    assert_eq!(
        run_chunks(Limits::default(), &chunks)[0],
        Ev::Err(ParseError::HeadTooLarge)
    );
}

#[test]
fn body_size_limit_is_413_without_waiting_for_the_body() {
    let r = b"POST / HTTP/1.1\r\nContent-Length: 65537\r\n\r\n";
    assert_eq!(first_error(r), ParseError::BodyTooLarge);
    let r = b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999999\r\n\r\n";
    assert_eq!(first_error(r), ParseError::BodyTooLarge);
    // At the limit: accepted.
    let body = vec![b'x'; 65536];
    let r = [
        b"POST / HTTP/1.1\r\nContent-Length: 65536\r\n\r\n".as_slice(),
        &body,
    ]
    .concat();
    assert!(matches!(run(&r).as_slice(), [Ev::Req(o)] if o.body.len() == 65536));
}

#[test]
fn feed_pushes_back_when_full_of_pipelined_requests() {
    let limits = Limits {
        max_head_bytes: 64,
        max_body_bytes: 0,
        ..Limits::default()
    };
    let one = b"GET /x HTTP/1.1\r\n\r\n"; // 19 bytes
    let many = one.repeat(20);
    let mut conn = Conn::new(limits);
    let n = conn.feed(&many);
    assert_eq!(n, 64);
    let mut seen = 0;
    let mut rest = &many[n..];
    loop {
        while let Next::Request(_) = conn.next_request() {
            seen += 1;
        }
        if rest.is_empty() {
            break;
        }
        let n = conn.feed(rest);
        assert!(n > 0);
        rest = &rest[n..];
    }
    assert_eq!(seen, 20);
}

#[test]
fn methods() {
    for (tok, m) in [
        ("GET", Method::Get),
        ("POST", Method::Post),
        ("DELETE", Method::Delete),
        ("get", Method::Other),
        ("BREW", Method::Other),
    ] {
        let r = format!("{tok} / HTTP/1.1\r\n\r\n");
        assert!(
            matches!(run(r.as_bytes()).as_slice(), [Ev::Req(o)] if o.method == m),
            "{tok}"
        );
    }
}

#[test]
fn leading_blank_line_is_tolerated() {
    // RFC 9112 section 2.2: a server SHOULD ignore at least one empty line before a request.
    assert_eq!(
        run(b"\r\nGET /a HTTP/1.1\r\n\r\n"),
        [Ev::Req(req(Method::Get, "/a"))]
    );
}
