//! Console input (`POST /v1/vms/{id}/console`) and the console long-poll (`GET
//! /v1/vms/{id}/console?wait_ms=T`), end to end over bytes against the fake backend.

mod common;

use common::{Fake, Resp, read_responses};
use hv::exit::StopReason;
use net::api::CONSOLE_INPUT_MAX;
use net::http::{Limits, Status};
use net::{ConsoleWait, Endpoint, Flow, Settings};
use serde_json::json;

const OCTETS: &str = "application/octet-stream";

fn request(method: &str, path: &str, ctype: Option<&str>, body: &[u8]) -> Vec<u8> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: hv\r\n");
    if let Some(c) = ctype {
        head += &format!("Content-Type: {c}\r\n");
    }
    if method == "POST" || !body.is_empty() {
        head += &format!("Content-Length: {}\r\n", body.len());
    }
    head += "\r\n";
    [head.as_bytes(), body].concat()
}

/// Everything `input` asks for on one fresh connection, with the flow of the last serve.
fn exchange(ep: &mut Endpoint, fake: &mut Fake, input: &[u8]) -> (Vec<Resp>, Flow) {
    let mut conn = ep.conn();
    let mut out = Vec::new();
    let taken = conn.feed(input);
    assert_eq!(taken, input.len());
    let flow = ep.serve(&mut conn, fake, &mut out);
    (read_responses(&out), flow)
}

fn one(fake: &mut Fake, input: &[u8]) -> (Resp, Flow) {
    let mut ep = Endpoint::new(Settings::default());
    let (mut r, flow) = exchange(&mut ep, fake, input);
    assert_eq!(r.len(), 1, "{r:?}");
    (r.pop().unwrap(), flow)
}

fn send(fake: &mut Fake, id: u32, bytes: &[u8]) -> (Resp, Flow) {
    let path = format!("/v1/vms/{id}/console");
    one(fake, &request("POST", &path, Some(OCTETS), bytes))
}

/// A fake with VM 1 running.
fn running() -> Fake {
    let mut fake = Fake::new(2);
    let (r, _) = one(
        &mut fake,
        &request(
            "POST",
            "/v1/vms",
            Some("application/json"),
            br#"{"name":"e","image":"hello","start":true}"#,
        ),
    );
    assert_eq!(r.status, 201);
    fake
}

#[test]
fn input_is_queued_whole_and_says_how_much_waits() {
    let mut fake = running();
    let (r, flow) = send(&mut fake, 1, b"ls\n");
    assert_eq!((r.status, flow), (200, Flow::Continue));
    assert_eq!(r.body, json!({"accepted":3,"queued":3,"capacity":4096}));
    let (r, _) = send(&mut fake, 1, b"\x1b[A\x00\xff");
    assert_eq!(r.body, json!({"accepted":5,"queued":8,"capacity":4096}));
    assert_eq!(fake.vms[0].input, b"ls\n\x1b[A\x00\xff");
    // Nothing to send is fine and queues nothing.
    let (r, _) = send(&mut fake, 1, b"");
    assert_eq!(r.body, json!({"accepted":0,"queued":8,"capacity":4096}));
    // A paused VM takes input too (it reads it when resumed).
    let (r, _) = one(&mut fake, &request("POST", "/v1/vms/1/pause", None, b""));
    assert_eq!(r.status, 200);
    assert_eq!(send(&mut fake, 1, b"x").0.status, 200);
}

#[test]
fn input_needs_a_running_or_paused_vm() {
    let mut fake = Fake::new(2);
    let (r, _) = send(&mut fake, 9, b"x");
    assert_eq!((r.status, r.code()), (404, "vm_not_found"));
    let create = request(
        "POST",
        "/v1/vms",
        Some("application/json"),
        br#"{"name":"c","image":"hello"}"#,
    );
    assert_eq!(one(&mut fake, &create).0.status, 201);
    let (r, flow) = send(&mut fake, 1, b"x");
    assert_eq!(
        (r.status, r.code(), flow),
        (409, "invalid_state", Flow::Continue)
    );
    assert_eq!(
        r.message(),
        "cannot send console input to a VM that is created; start it first"
    );
    fake.vms[0].state = hv::vm::VmState::Running;
    fake.guest_exit(1, StopReason::DebugExit(0));
    let (r, _) = send(&mut fake, 1, b"x");
    assert_eq!((r.status, r.code()), (409, "invalid_state"));
    assert!(r.message().contains("stopped"), "{}", r.message());
    assert!(fake.vms[0].input.is_empty());
}

#[test]
fn a_full_queue_refuses_the_whole_request_and_keeps_the_connection() {
    let mut fake = running();
    let fill = vec![b'a'; CONSOLE_INPUT_MAX - 2];
    assert_eq!(send(&mut fake, 1, &fill).0.status, 200);
    let (r, flow) = send(&mut fake, 1, b"abc");
    assert_eq!(
        (r.status, r.code(), flow),
        (409, "console_busy", Flow::Continue)
    );
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(r.keep_alive());
    assert!(r.message().contains("2 bytes free"), "{}", r.message());
    assert!(
        r.message().contains("nothing was queued"),
        "{}",
        r.message()
    );
    assert_eq!(
        fake.vms[0].input.len(),
        CONSOLE_INPUT_MAX - 2,
        "nothing of it queued"
    );
    // What fits still goes in, to the last byte.
    let (r, _) = send(&mut fake, 1, b"bc");
    assert_eq!(r.body, json!({"accepted":2,"queued":4096,"capacity":4096}));
}

#[test]
fn input_over_the_queue_size_is_413_from_the_head() {
    let mut fake = running();
    let exact = vec![b'z'; CONSOLE_INPUT_MAX];
    assert_eq!(send(&mut fake, 1, &exact).0.status, 200);
    fake.vms[0].input.clear();
    // The head alone is enough to refuse it: no body follows.
    let head = format!(
        "POST /v1/vms/1/console HTTP/1.1\r\nContent-Type: {OCTETS}\r\nContent-Length: {}\r\n\r\n",
        CONSOLE_INPUT_MAX + 1
    );
    let (r, flow) = one(&mut fake, head.as_bytes());
    assert_eq!(
        (r.status, r.code(), flow),
        (413, "body_too_large", Flow::Close)
    );
    assert!(fake.vms[0].input.is_empty());
    assert!(!fake.log.iter().any(|l| l.starts_with("input 1 4097")));
    // A tighter JSON body limit is the tighter limit here too.
    let settings = Settings {
        limits: Limits {
            max_body_bytes: 100,
            ..Limits::DEFAULT
        },
        ..Settings::default()
    };
    let mut ep = Endpoint::new(settings);
    let (r, _) = exchange(
        &mut ep,
        &mut fake,
        &request("POST", "/v1/vms/1/console", Some(OCTETS), &[b'y'; 101]),
    );
    assert_eq!((r[0].status, r[0].code()), (413, "body_too_large"));
    let (r, _) = exchange(
        &mut ep,
        &mut fake,
        &request("POST", "/v1/vms/1/console", Some(OCTETS), &[b'y'; 100]),
    );
    assert_eq!(r[0].status, 200);
}

#[test]
fn input_needs_octet_stream() {
    let mut fake = running();
    for ctype in [None, Some("text/plain"), Some("application/json")] {
        let (r, _) = one(
            &mut fake,
            &request("POST", "/v1/vms/1/console", ctype, b"x"),
        );
        assert_eq!(
            (r.status, r.code()),
            (415, "unsupported_media_type"),
            "{ctype:?}"
        );
    }
    assert!(fake.vms[0].input.is_empty());
    let (r, _) = one(
        &mut fake,
        &request("PUT", "/v1/vms/1/console", Some(OCTETS), b"x"),
    );
    assert_eq!((r.status, r.header("allow")), (405, Some("GET, POST")));
}

/// Serve `input` on `conn` and return the flow with what was written.
fn serve_once(
    ep: &mut Endpoint,
    fake: &mut Fake,
    conn: &mut net::Conn,
    input: &[u8],
) -> (Flow, Vec<u8>) {
    assert_eq!(conn.feed(input), input.len());
    let mut out = Vec::new();
    let flow = ep.serve(conn, fake, &mut out);
    (flow, out)
}

fn parked(flow: Flow) -> ConsoleWait {
    match flow {
        Flow::Wait(w) => w,
        other => panic!("not parked: {other:?}"),
    }
}

#[test]
fn long_poll_waits_for_output_then_answers_with_it() {
    let mut fake = running();
    let mut ep = Endpoint::new(Settings::default());
    let mut conn = ep.conn();
    let get = request("GET", "/v1/vms/1/console?offset=0&wait_ms=5000", None, b"");
    let (flow, out) = serve_once(&mut ep, &mut fake, &mut conn, &get);
    assert!(out.is_empty(), "nothing written while parked");
    let wait = parked(flow);
    assert_eq!((wait.id, wait.offset, wait.wait_ms), (1, 0, 5000));
    let mut out = Vec::new();
    assert!(!ep.resume(&wait, 10, &mut fake, &mut out), "nothing yet");
    assert!(out.is_empty());
    fake.guest_output(1, b"$ ");
    assert!(ep.resume(&wait, 20, &mut fake, &mut out));
    let r = read_responses(&out);
    assert_eq!(
        (r.len(), r[0].status, r[0].raw.as_slice()),
        (1, 200, &b"$ "[..])
    );
    assert_eq!(r[0].header("x-console-next-offset"), Some("2"));
    assert_eq!(r[0].header("x-console-dropped"), Some("0"));
    assert!(r[0].keep_alive());
    assert_eq!(ep.stats().responses(Status::Ok), 1, "counted once answered");
    // Bytes already there: answered at once, no wait.
    let get = request("GET", "/v1/vms/1/console?wait_ms=5000", None, b"");
    let (flow, out) = serve_once(&mut ep, &mut fake, &mut conn, &get);
    assert_eq!(flow, Flow::Continue);
    assert_eq!(read_responses(&out)[0].raw, b"$ ");
}

#[test]
fn long_poll_times_out_empty_with_the_same_offset() {
    let mut fake = running();
    fake.guest_output(1, b"abc");
    let mut ep = Endpoint::new(Settings::default());
    let mut conn = ep.conn();
    let get = request("GET", "/v1/vms/1/console?wait_ms=100&offset=3", None, b"");
    let wait = parked(serve_once(&mut ep, &mut fake, &mut conn, &get).0);
    let mut out = Vec::new();
    assert!(!ep.resume(&wait, 99, &mut fake, &mut out));
    assert!(ep.resume(&wait, 100, &mut fake, &mut out));
    let r = read_responses(&out);
    assert_eq!((r[0].status, r[0].raw.len()), (200, 0));
    assert_eq!(r[0].header("x-console-next-offset"), Some("3"));
}

#[test]
fn long_poll_does_not_wait_for_offsets_that_cannot_come() {
    let mut fake = running();
    fake.guest_output(1, b"abc");
    // Past the end (a reset VM, a bogus offset): the end at once, to resynchronise.
    let (r, flow) = one(
        &mut fake,
        &request(
            "GET",
            "/v1/vms/1/console?offset=99&wait_ms=30000",
            None,
            b"",
        ),
    );
    assert_eq!((r.status, flow, r.raw.len()), (200, Flow::Continue, 0));
    assert_eq!(r.header("x-console-next-offset"), Some("3"));
    // Older than the ring holds: what is left, at once.
    fake.guest_output(1, &[b'x'; 40]);
    let (r, flow) = one(
        &mut fake,
        &request("GET", "/v1/vms/1/console?offset=0&wait_ms=30000", None, b""),
    );
    assert_eq!((r.status, flow), (200, Flow::Continue));
    assert_ne!(r.header("x-console-dropped"), Some("0"));
    // No such VM: 404 at once.
    let (r, _) = one(
        &mut fake,
        &request("GET", "/v1/vms/7/console?wait_ms=10", None, b""),
    );
    assert_eq!((r.status, r.code()), (404, "vm_not_found"));
}

#[test]
fn a_vm_deleted_during_a_long_poll_is_404() {
    let mut fake = running();
    let mut ep = Endpoint::new(Settings::default());
    let mut conn = ep.conn();
    let get = request("GET", "/v1/vms/1/console?wait_ms=1000", None, b"");
    let wait = parked(serve_once(&mut ep, &mut fake, &mut conn, &get).0);
    fake.vms.clear();
    let mut out = Vec::new();
    assert!(ep.resume(&wait, 1, &mut fake, &mut out));
    let r = read_responses(&out);
    assert_eq!((r[0].status, r[0].code()), (404, "vm_not_found"));
    assert_eq!(r[0].message(), "no such vm: /v1/vms/1/console");
}

#[test]
fn bad_waits_are_400() {
    let mut fake = running();
    for q in [
        "wait_ms=30001",
        "wait_ms=-5",
        "wait_ms=abc",
        "wait_ms=",
        "wait_ms=1&wait_ms=2",
        "wait=1",
        "offset=0&wait_ms=1&x=1",
    ] {
        let path = format!("/v1/vms/1/console?{q}");
        let (r, flow) = one(&mut fake, &request("GET", &path, None, b""));
        assert_eq!(
            (r.status, r.code(), flow),
            (400, "invalid_query", Flow::Continue),
            "{q}"
        );
        assert!(r.message().contains("wait_ms"), "{}", r.message());
    }
}

#[test]
fn requests_behind_a_long_poll_wait_for_it_in_order() {
    let mut fake = running();
    let mut ep = Endpoint::new(Settings::default());
    let mut conn = ep.conn();
    let mut input = request("GET", "/v1/health", None, b"");
    input.extend(request("GET", "/v1/vms/1/console?wait_ms=500", None, b""));
    input.extend(request("GET", "/v1/vms/1", None, b""));
    let (flow, out) = serve_once(&mut ep, &mut fake, &mut conn, &input);
    let wait = parked(flow);
    let r = read_responses(&out);
    assert_eq!(r.len(), 1, "only what came before the wait");
    assert_eq!(r[0].body["status"], "ok");
    let mut out = Vec::new();
    assert!(ep.resume(&wait, 500, &mut fake, &mut out));
    let flow = ep.serve(&mut conn, &mut fake, &mut out);
    assert_eq!(flow, Flow::Continue);
    let r = read_responses(&out);
    assert_eq!(r.len(), 2);
    assert_eq!((r[0].status, r[0].raw.len()), (200, 0));
    assert_eq!(r[1].body["name"], "e");
}

#[test]
fn a_closing_long_poll_closes_after_its_answer() {
    let mut fake = running();
    let mut ep = Endpoint::new(Settings::default());
    let mut conn = ep.conn();
    let get = b"GET /v1/vms/1/console?wait_ms=50 HTTP/1.1\r\nConnection: close\r\n\r\n";
    let wait = parked(serve_once(&mut ep, &mut fake, &mut conn, get).0);
    fake.guest_output(1, b"!");
    let mut out = Vec::new();
    assert!(ep.resume(&wait, 0, &mut fake, &mut out));
    let r = read_responses(&out);
    assert_eq!((r[0].raw.as_slice(), r[0].keep_alive()), (&b"!"[..], false));
    assert_eq!(ep.serve(&mut conn, &mut fake, &mut out), Flow::Close);
}

#[test]
fn handle_answers_a_long_poll_at_once() {
    let mut fake = running();
    let raw = request("GET", "/v1/vms/1/console?wait_ms=30000", None, b"");
    let mut conn = net::Conn::new(Limits::DEFAULT);
    conn.feed(&raw);
    let net::Next::Request(req) = conn.next_request() else {
        panic!("no request")
    };
    let mut out = Vec::new();
    assert_eq!(
        net::handle(&mut fake, &req, &Limits::DEFAULT, &mut out),
        Status::Ok
    );
    assert_eq!(read_responses(&out)[0].raw.len(), 0);
}

#[test]
fn long_poll_needs_the_token_first() {
    let mut fake = running();
    let settings = Settings {
        token: Some(hv::config::ApiToken::new("s3cret").unwrap()),
        ..Settings::default()
    };
    let mut ep = Endpoint::new(settings);
    let (r, flow) = exchange(
        &mut ep,
        &mut fake,
        &request("GET", "/v1/vms/1/console?wait_ms=30000", None, b""),
    );
    assert_eq!((r[0].status, flow), (401, Flow::Continue));
}
