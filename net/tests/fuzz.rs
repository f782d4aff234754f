//! Random input: nothing panics, every output is a sequence of well-formed responses, and how
//! the bytes are split into feeds never changes the output.

mod common;

use common::{Fake, read_responses};
use net::{Conn, Flow, Limits, serve};
use proptest::prelude::*;

/// Feeds `chunks` in order, serving after each feed until no more progress; returns all output.
fn run(limits: Limits, chunks: &[&[u8]]) -> (Vec<u8>, Flow) {
    let mut conn = Conn::new(limits);
    let mut fake = Fake::new(4);
    let mut out = Vec::new();
    let mut flow = Flow::Continue;
    for chunk in chunks {
        let mut rest = *chunk;
        loop {
            let n = conn.feed(rest);
            rest = &rest[n..];
            let mut progressed = n > 0;
            loop {
                // A transport sends and clears its output between calls.
                let mut sent = Vec::new();
                flow = serve(&mut conn, &mut fake, &mut sent);
                if sent.is_empty() {
                    break;
                }
                out.extend_from_slice(&sent);
                progressed = true;
                if flow == Flow::Close {
                    break;
                }
            }
            if rest.is_empty() {
                break;
            }
            assert!(
                progressed,
                "stuck: input left, nothing taken, nothing answered"
            );
        }
    }
    (out, flow)
}

/// The invariants every output satisfies.
fn check(out: &[u8], flow: Flow) {
    let resps = read_responses(out);
    if let Some((last, init)) = resps.split_last() {
        assert!(
            init.iter().all(|r| r.keep_alive()),
            "only the last response may close"
        );
        assert_eq!(!last.keep_alive(), flow == Flow::Close);
    } else {
        assert_eq!(flow, Flow::Continue, "closing without an answer");
    }
    for r in &resps {
        assert!(matches!(
            r.status,
            200 | 201
                | 202
                | 204
                | 400
                | 404
                | 405
                | 409
                | 411
                | 413
                | 415
                | 431
                | 500
                | 501
                | 505
                | 507
        ));
    }
}

/// Cuts `bytes` at the given points.
fn split<'a>(bytes: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    cuts.sort_unstable();
    let mut chunks = Vec::new();
    let mut at = 0;
    for c in cuts {
        chunks.push(&bytes[at..c]);
        at = c;
    }
    chunks.push(&bytes[at..]);
    chunks
}

/// Pieces that add up to plausible, almost plausible and broken requests.
fn fragment() -> impl Strategy<Value = Vec<u8>> {
    let s = |x: &str| Just(x.as_bytes().to_vec());
    prop_oneof![
        4 => s("GET /v1/health HTTP/1.1\r\n\r\n"),
        3 => s("GET /v1/cpus HTTP/1.1\r\nHost: hv\r\n\r\n"),
        3 => (0u32..6, prop::bool::ANY).prop_map(|(id, on)| format!(
            "POST /v1/cpus/{id}/{} HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            if on { "online" } else { "offline" }
        ).into_bytes()),
        2 => s("GET /v1/cpus/1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"),
        1 => s("GET /v1/cpus/1 HTTP/1.1\r\nConnection: close\r\n\r\n"),
        1 => s("PUT /v1/health HTTP/1.1\r\n\r\n"),
        1 => s("BREW /v1/cpus/x HTTP/1.1\r\n\r\n"),
        1 => s("GET /v1/cpus/99999999999 HTTP/1.1\r\n\r\n"),
        1 => (0usize..80).prop_map(|n| format!(
            "POST /v1/cpus/0/online HTTP/1.1\r\nContent-Length: {n}\r\n\r\n"
        ).into_bytes()),
        1 => s("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
        1 => s("GET / HTTP/2.0\r\n\r\n"),
        3 => vm_request(),
        1 => s("GET /v1/host HTTP/1.1\r\n\r\n"),
        1 => s("GET /v1/metrics HTTP/1.1\r\n\r\n"),
        1 => s("PUT /v1/vms/1/image HTTP/1.1\r\nContent-Type: application/octet-stream\r\nContent-Length: 99999999\r\n\r\n"),
        1 => s("Content-Type: application/json\r\n"),
        1 => s("Authorization: Bearer x\r\n"),
        2 => s("X-Header: value\r\n"),
        2 => s("\r\n"),
        2 => s("GET "),
        2 => s(" HTTP/1.1"),
        3 => prop::collection::vec(any::<u8>(), 0..40),
        1 => prop::collection::vec(prop::sample::select(b"/v1cpus{}%\"\\ \r\n:GETPOS".to_vec()), 0..60),
    ]
}

/// JSON that is sometimes a valid VM or PMU body and often nearly one.
fn json_body() -> impl Strategy<Value = String> {
    let value = prop_oneof![
        Just("1".to_string()),
        Just("0".to_string()),
        Just("-1".to_string()),
        Just("1.5".to_string()),
        Just("1e9".to_string()),
        Just("99999999999999999999999".to_string()),
        Just("null".to_string()),
        Just("true".to_string()),
        Just("\"hello\"".to_string()),
        Just("\"a\\\"b\\u00e9\"".to_string()),
        Just("{}".to_string()),
        Just("[]".to_string()),
        Just("{\"vendor\":\"intel\",\"version\":5,\"fixed_counters\":4}".to_string()),
        Just("{\"vendor\":\"amd\",\"kind\":\"perfmon_v2\",\"gp_counters\":3}".to_string()),
        "\"[a-z0-9_ -]{0,40}\"",
    ];
    let key = prop::sample::select(vec![
        "name",
        "image",
        "memory_mib",
        "cpu",
        "cmdline",
        "on_crash",
        "local_apic",
        "strict_mmio",
        "pmu",
        "start",
        "vendor",
        "version",
        "gp_counters",
        "fixed_counters",
        "width",
        "full_width_writes",
        "kind",
        "x",
    ]);
    let fields = prop::collection::vec((key, value), 0..8);
    (fields, prop::bool::ANY, 0usize..4).prop_map(|(fields, named, cut)| {
        let mut parts: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
        if named {
            parts.insert(0, "\"name\":\"v\",\"image\":\"hello\"".to_string());
        }
        let mut body = format!("{{{}}}", parts.join(","));
        body.truncate(body.len().saturating_sub(cut));
        body
    })
}

/// A request to one of the VM routes, with a plausible body.
fn vm_request() -> impl Strategy<Value = Vec<u8>> {
    let target = prop_oneof![
        Just(("POST", "/v1/vms".to_string())),
        Just(("GET", "/v1/vms".to_string())),
        (0u32..4).prop_map(|id| ("GET", format!("/v1/vms/{id}"))),
        (0u32..4).prop_map(|id| ("DELETE", format!("/v1/vms/{id}"))),
        (
            0u32..4,
            prop::sample::select(vec!["start", "pause", "resume", "stop", "reset"])
        )
            .prop_map(|(id, a)| ("POST", format!("/v1/vms/{id}/{a}"))),
        (0u32..4, prop::option::of("[0-9x=&-]{0,12}")).prop_map(|(id, q)| (
            "GET",
            match q {
                Some(q) => format!("/v1/vms/{id}/console?offset={q}"),
                None => format!("/v1/vms/{id}/console"),
            }
        )),
        (0u32..4).prop_map(|id| ("GET", format!("/v1/vms/{id}/stats"))),
        (0u32..4).prop_map(|id| ("PUT", format!("/v1/vms/{id}/pmu"))),
        (0u32..4).prop_map(|id| ("PUT", format!("/v1/vms/{id}/image"))),
    ];
    let ctype = prop::sample::select(vec![
        "",
        "Content-Type: application/json\r\n",
        "Content-Type: application/octet-stream\r\n",
        "Content-Type: text/plain\r\n",
    ]);
    let body = prop_oneof![
        3 => json_body().prop_map(String::into_bytes),
        1 => Just(b"\x7fELF\x01\x01\x01".to_vec()),
        1 => prop::collection::vec(any::<u8>(), 0..64),
    ];
    (target, ctype, body).prop_map(|((m, p), c, b)| {
        let head = format!("{m} {p} HTTP/1.1\r\n{c}Content-Length: {}\r\n\r\n", b.len());
        [head.into_bytes(), b].concat()
    })
}

/// A valid request, and whether it asks to close.
fn valid_request() -> impl Strategy<Value = (Vec<u8>, bool)> {
    let path = prop_oneof![
        Just("/v1/health".to_string()),
        Just("/v1/cpus".to_string()),
        (0u32..6).prop_map(|id| format!("/v1/cpus/{id}")),
        (0u32..6).prop_map(|id| format!("/v1/cpus/{id}/online")),
        (0u32..6).prop_map(|id| format!("/v1/cpus/{id}/offline")),
        Just("/v1/vms".to_string()),
        Just("/v1/host".to_string()),
        Just("/v1/metrics".to_string()),
        (0u32..4).prop_map(|id| format!("/v1/vms/{id}")),
        (0u32..4).prop_map(|id| format!("/v1/vms/{id}/start")),
        (0u32..4).prop_map(|id| format!("/v1/vms/{id}/console?offset={id}")),
        "/[a-z0-9/]{0,20}",
    ];
    let method = prop::sample::select(vec!["GET", "POST", "PUT", "DELETE"]);
    let conn = prop::sample::select(vec![
        "",
        "Connection: keep-alive\r\n",
        "Connection: close\r\n",
    ]);
    let body = prop::collection::vec(any::<u8>(), 0..64);
    (method, path, conn, body, prop::bool::ANY).prop_map(|(m, p, c, b, v10)| {
        let version = if v10 { "1.0" } else { "1.1" };
        let closes = c.contains("close") || (v10 && !c.contains("keep-alive"));
        let head = format!(
            "{m} {p} HTTP/{version}\r\nHost: hv\r\n{c}Content-Length: {}\r\n\r\n",
            b.len()
        );
        ([head.into_bytes(), b].concat(), closes)
    })
}

fn small_limits() -> impl Strategy<Value = Limits> {
    (1usize..40, 16usize..300, 0usize..100, 64usize..2000).prop_map(|(h, head, body, resp)| {
        Limits {
            max_headers: h,
            max_head_bytes: head,
            max_body_bytes: body,
            max_upload_bytes: body * 3,
            max_response_bytes: resp,
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_bytes_give_well_formed_output(
        bytes in prop::collection::vec(any::<u8>(), 0..4096),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let (out, flow) = run(Limits::default(), &split(&bytes, &cuts));
        check(&out, flow);
    }

    #[test]
    fn request_soup_gives_well_formed_output_however_split(
        frags in prop::collection::vec(fragment(), 0..24),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let bytes = frags.concat();
        let (whole, whole_flow) = run(Limits::default(), &[&bytes]);
        check(&whole, whole_flow);
        let (parts, parts_flow) = run(Limits::default(), &split(&bytes, &cuts));
        prop_assert_eq!(String::from_utf8_lossy(&whole), String::from_utf8_lossy(&parts));
        prop_assert_eq!(whole_flow, parts_flow);
    }

    #[test]
    fn tight_limits_never_wedge(
        limits in small_limits(),
        frags in prop::collection::vec(fragment(), 0..24),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let bytes = frags.concat();
        let (whole, whole_flow) = run(limits, &[&bytes]);
        check(&whole, whole_flow);
        let (parts, parts_flow) = run(limits, &split(&bytes, &cuts));
        prop_assert_eq!(whole, parts);
        prop_assert_eq!(whole_flow, parts_flow);
    }

    #[test]
    fn valid_pipelines_get_one_response_each(
        reqs in prop::collection::vec(valid_request(), 0..40),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let bytes: Vec<u8> = reqs.iter().flat_map(|(b, _)| b.clone()).collect();
        let answered = reqs.iter().position(|(_, closes)| *closes).map_or(reqs.len(), |i| i + 1);
        let (out, flow) = run(Limits::default(), &split(&bytes, &cuts));
        check(&out, flow);
        let resps = read_responses(&out);
        prop_assert_eq!(resps.len(), answered);
        prop_assert!(resps.iter().all(|r| r.status < 500
            || r.status == 500 && r.code() == "cpu_failed"
            || r.status == 507 && r.code() == "insufficient_storage"));
        prop_assert_eq!(flow == Flow::Close, answered < reqs.len() || reqs.last().is_some_and(|r| r.1));
    }

    #[test]
    fn json_bodies_are_answered_with_a_vm_or_a_field_error(
        body in json_body(),
        pmu in prop::bool::ANY,
    ) {
        let path = if pmu { "/v1/vms/1/pmu" } else { "/v1/vms" };
        let method = if pmu { "PUT" } else { "POST" };
        let create = b"POST /v1/vms HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 28\r\n\r\n{\"name\":\"a\",\"image\":\"hello\"}";
        let req = format!(
            "{method} {path} HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let (out, _) = run(Limits::default(), &[create, req.as_bytes()]);
        let resps = read_responses(&out);
        prop_assert_eq!(resps.len(), 2);
        let r = &resps[1];
        match r.status {
            200 | 201 => prop_assert!(r.body["id"].is_u64()),
            400 => {
                prop_assert!(["invalid_body", "unknown_image", "unsupported"].contains(&r.code()));
                if r.code() == "invalid_body" {
                    // Every message but the syntax one starts with a field name.
                    let m = r.message();
                    prop_assert!(m == "body must be one JSON object" || m.contains(": "), "{}", m);
                }
            }
            409 | 507 => {}
            s => prop_assert!(false, "status {} for {}", s, body),
        }
    }

    #[test]
    fn byte_by_byte_equals_whole(frags in prop::collection::vec(fragment(), 0..8)) {
        let bytes = frags.concat();
        let singles: Vec<&[u8]> = bytes.chunks(1).collect();
        prop_assert_eq!(run(Limits::default(), &[&bytes]), run(Limits::default(), &singles));
    }
}
