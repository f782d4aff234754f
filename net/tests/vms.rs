//! The VM, host and metrics routes, authentication and the endpoint's limits, end to end over
//! bytes against the fake backend.

mod common;

use common::{FAKE_CONSOLE, Fake, Resp, read_responses};
use hv::exit::{GuestPhys, StopReason};
use net::http::Limits;
use net::{Conn, Endpoint, Flow, Settings};
use serde_json::json;

/// Feeds `input` into a fresh connection of `ep` and serves it until it is all answered.
fn exchange_ep(ep: &mut Endpoint, fake: &mut Fake, input: &[u8]) -> (Vec<Resp>, Flow) {
    let mut conn = ep.conn();
    let mut out = Vec::new();
    let mut rest = input;
    let mut flow;
    loop {
        let n = conn.feed(rest);
        rest = &rest[n..];
        let mut sent = Vec::new();
        flow = ep.serve(&mut conn, fake, &mut sent);
        out.extend_from_slice(&sent);
        if flow == Flow::Close || (rest.is_empty() && sent.is_empty()) {
            break;
        }
        assert!(n > 0 || !sent.is_empty(), "stuck");
    }
    (read_responses(&out), flow)
}

fn request(method: &str, path: &str, ctype: Option<&str>, body: &[u8]) -> Vec<u8> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: hv\r\n");
    if let Some(c) = ctype {
        head += &format!("Content-Type: {c}\r\n");
    }
    if !body.is_empty() || method == "POST" || method == "PUT" {
        head += &format!("Content-Length: {}\r\n", body.len());
    }
    head += "\r\n";
    [head.as_bytes(), body].concat()
}

/// One request, one response, on a fresh connection without auth.
fn call(fake: &mut Fake, method: &str, path: &str, ctype: Option<&str>, body: &[u8]) -> Resp {
    let mut ep = Endpoint::new(Settings::default());
    let (mut r, _) = exchange_ep(&mut ep, fake, &request(method, path, ctype, body));
    assert_eq!(r.len(), 1);
    r.pop().unwrap()
}

fn get(fake: &mut Fake, path: &str) -> Resp {
    call(fake, "GET", path, None, b"")
}

fn post(fake: &mut Fake, path: &str) -> Resp {
    call(fake, "POST", path, None, b"")
}

fn create(fake: &mut Fake, body: &str) -> Resp {
    call(
        fake,
        "POST",
        "/v1/vms",
        Some("application/json"),
        body.as_bytes(),
    )
}

#[test]
fn create_and_get() {
    let mut fake = Fake::new(2);
    let r = create(&mut fake, r#"{"name":"a","image":"hello"}"#);
    assert_eq!((r.status, r.reason.as_str()), (201, "Created"));
    assert_eq!(r.header("location"), Some("/v1/vms/1"));
    let exits = json!({"total":0,"cpuid":0,"io":0,"msr":0,"hlt":0,"npf":0,"triple_fault":0,
        "virt_insn":0,"intr":0,"exception":0,"other":0});
    let vm = json!({"id":1,"name":"a","image":"hello","state":"created","reason":null,
        "memory_mib":16,"cpu":null,"running_on":null,"on_crash":"stop","local_apic":false,"strict_mmio":false,"cmdline":"",
        "pmu":{"vendor":"none"},"console_bytes":0,"resets":0,
        "stats":{"exits":exits,"resets":{"api":0,"triple_fault":0,"port_cf9":0,"keyboard_controller":0},
                 "halts":0,"run_time_us":0,"unhandled_port_reads":0,"unhandled_port_writes":0,
                 "unhandled_mmio_reads":0,"unhandled_mmio_writes":0}});
    assert_eq!(r.body, vm);
    assert_eq!(get(&mut fake, "/v1/vms/1").body, vm);
    assert_eq!(get(&mut fake, "/v1/vms").body, json!([vm]));
    assert_eq!(get(&mut fake, "/v1/vms/1/stats").body, vm["stats"]);

    let r = create(
        &mut fake,
        r#"{"name":"b","image":"spinner","memory_mib":32,"cpu":1,"cmdline":"x=1","on_crash":"reset",
            "pmu":{"vendor":"intel","version":5},"start":true}"#,
    );
    assert_eq!(r.status, 201);
    let b = &r.body;
    assert_eq!(
        (
            b["id"].as_u64(),
            b["state"].as_str(),
            b["running_on"].as_u64()
        ),
        (Some(2), Some("running"), Some(1))
    );
    assert_eq!(b["cmdline"], "x=1");
    assert_eq!(b["on_crash"], "reset");
    assert_eq!(
        b["pmu"],
        json!({"vendor":"intel","version":5,"gp_counters":4,"fixed_counters":3,"width":48,"full_width_writes":true})
    );
    assert_eq!(get(&mut fake, "/v1/vms").body.as_array().unwrap().len(), 2);
    assert_eq!(
        get(&mut fake, "/v1/vms/3").code(),
        "vm_not_found",
        "ids are not reused and unknown ones are 404"
    );
}

#[test]
fn create_errors() {
    let mut fake = Fake::new(2);
    let cases: &[(&str, u16, &str, &str)] = &[
        (
            r#"{"image":"hello"}"#,
            400,
            "invalid_body",
            "name: required",
        ),
        (
            r#"{"name":"a","image":"hello","memory_mib":2048}"#,
            400,
            "invalid_body",
            "memory_mib: expected an integer from 1 to 1024",
        ),
        (
            r#"{"name":"a","image":"hello","x":1}"#,
            400,
            "invalid_body",
            "\"x\": unknown field",
        ),
        (
            r#"{"name":"a","image":"hello""#,
            400,
            "invalid_body",
            "body must be one JSON object",
        ),
        (
            r#"{"name":"a","image":"nope"}"#,
            400,
            "unknown_image",
            "no built-in image has that name",
        ),
        (
            r#"{"name":"a","image":"hello","pmu":{"vendor":"amd"}}"#,
            400,
            "unsupported",
            "an AMD PMU on an Intel host",
        ),
        (
            r#"{"name":"a","image":"hello","pmu":{"vendor":"intel","gp_counters":9}}"#,
            400,
            "invalid_body",
            "pmu.gp_counters: counter count not allowed for this PMU (got 9, allowed 1..=8)",
        ),
        (
            r#"{"name":"a","image":"hello","memory_mib":65}"#,
            507,
            "insufficient_storage",
            "",
        ),
    ];
    for (body, status, code, msg) in cases {
        let r = create(&mut fake, body);
        assert_eq!((r.status, r.code()), (*status, *code), "{body}");
        assert!(r.message().starts_with(msg), "{body}: {}", r.message());
    }
    assert!(fake.vms.is_empty());
    assert_eq!(
        create(&mut fake, r#"{"name":"a","image":"hello"}"#).status,
        201
    );
    let r = create(&mut fake, r#"{"name":"a","image":"hello"}"#);
    assert_eq!((r.status, r.code()), (409, "name_taken"));
    for n in ["b", "c", "d"] {
        let r = create(
            &mut fake,
            &format!(r#"{{"name":"{n}","image":"hello","memory_mib":1}}"#),
        );
        assert_eq!(r.status, 201);
    }
    let r = create(&mut fake, r#"{"name":"e","image":"hello","memory_mib":1}"#);
    assert_eq!((r.status, r.code()), (409, "too_many_vms"));
}

#[test]
fn bodies_need_their_content_type() {
    let mut fake = Fake::new(1);
    let body = br#"{"name":"a","image":"hello"}"#;
    for ct in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let r = call(&mut fake, "POST", "/v1/vms", ct, body);
        assert_eq!(
            (r.status, r.code()),
            (415, "unsupported_media_type"),
            "{ct:?}"
        );
        assert_eq!(r.message(), "Content-Type must be application/json");
    }
    let r = call(
        &mut fake,
        "POST",
        "/v1/vms",
        Some("application/json; charset=utf-8"),
        body,
    );
    assert_eq!(r.status, 201);
    let r = call(
        &mut fake,
        "PUT",
        "/v1/vms/1/image",
        Some("application/json"),
        b"\x7fELF",
    );
    assert_eq!((r.status, r.code()), (415, "unsupported_media_type"));
    let r = call(
        &mut fake,
        "PUT",
        "/v1/vms/1/pmu",
        Some("application/octet-stream"),
        b"{}",
    );
    assert_eq!(r.status, 415);
    assert!(fake.vms[0].image.is_none());
}

#[test]
fn lifecycle() {
    let mut fake = Fake::new(2);
    create(&mut fake, r#"{"name":"a","image":"hello"}"#);
    let r = post(&mut fake, "/v1/vms/1/pause");
    assert_eq!((r.status, r.code()), (409, "invalid_state"));
    assert_eq!(r.message(), "cannot pause a VM that is created");
    for (action, state) in [
        ("start", "running"),
        ("pause", "paused"),
        ("resume", "running"),
        ("reset", "running"),
        ("stop", "stopped"),
    ] {
        let r = post(&mut fake, &format!("/v1/vms/1/{action}"));
        assert_eq!(
            (r.status, r.body["state"].as_str()),
            (200, Some(state)),
            "{action}"
        );
    }
    let r = get(&mut fake, "/v1/vms/1");
    assert_eq!(r.body["reason"], "stopped by request");
    assert_eq!(r.body["stats"]["resets"]["api"], 1);
    let r = post(&mut fake, "/v1/vms/1/stop");
    assert_eq!(r.message(), "cannot stop a VM that is stopped");

    post(&mut fake, "/v1/vms/1/start");
    fake.guest_exit(
        1,
        StopReason::NptViolation {
            gpa: GuestPhys(0xFEE0_0000),
        },
    );
    let r = get(&mut fake, "/v1/vms/1");
    assert_eq!(r.body["state"], "crashed");
    assert_eq!(
        r.body["reason"],
        format!("npt violation at GPA {}", GuestPhys(0xFEE0_0000))
    );

    let r = post(&mut fake, "/v1/vms/9/start");
    assert_eq!((r.status, r.code()), (404, "vm_not_found"));
    let r = post(&mut fake, "/v1/vms/x/start");
    assert_eq!((r.status, r.code()), (400, "invalid_id"));
}

#[test]
fn delete() {
    let mut fake = Fake::new(2);
    create(&mut fake, r#"{"name":"a","image":"hello","start":true}"#);
    let r = call(&mut fake, "DELETE", "/v1/vms/1", None, b"");
    assert_eq!((r.status, r.code()), (409, "invalid_state"));
    assert_eq!(r.message(), "cannot delete a VM that is running");
    post(&mut fake, "/v1/vms/1/stop");
    let r = call(&mut fake, "DELETE", "/v1/vms/1", None, b"");
    assert_eq!(
        (r.status, r.reason.as_str(), r.raw.len()),
        (204, "No Content", 0)
    );
    assert!(r.keep_alive());
    let r = call(&mut fake, "DELETE", "/v1/vms/1", None, b"");
    assert_eq!(r.status, 404);
    assert_eq!(get(&mut fake, "/v1/vms").body, json!([]));
}

#[test]
fn console() {
    let mut fake = Fake::new(1);
    create(&mut fake, r#"{"name":"a","image":"hello","start":true}"#);
    let r = get(&mut fake, "/v1/vms/1/console");
    assert_eq!((r.status, r.raw.len()), (200, 0));
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    assert_eq!(r.header("x-console-next-offset"), Some("0"));
    assert_eq!(r.header("x-console-dropped"), Some("0"));

    fake.guest_output(1, b"hello\n\xff\x00");
    let r = get(&mut fake, "/v1/vms/1/console?offset=0");
    assert_eq!(r.raw, b"hello\n\xff\x00");
    assert_eq!(r.header("x-console-next-offset"), Some("8"));
    let r = get(&mut fake, "/v1/vms/1/console?offset=6");
    assert_eq!(r.raw, b"\xff\x00");
    let r = get(&mut fake, "/v1/vms/1/console?offset=8");
    assert_eq!(r.raw, b"");

    // Overrun the small fake ring: a reader at 0 gets the oldest retained byte on.
    fake.guest_output(1, &[b'x'; FAKE_CONSOLE]);
    let total = 8 + FAKE_CONSOLE as u64;
    let r = get(&mut fake, "/v1/vms/1/console?offset=0");
    assert_eq!(r.raw, vec![b'x'; FAKE_CONSOLE]);
    assert_eq!(r.header("x-console-dropped"), Some("8"));
    assert_eq!(
        r.header("x-console-next-offset"),
        Some(total.to_string().as_str())
    );
    assert_eq!(get(&mut fake, "/v1/vms/1").body["console_bytes"], total);
    assert_eq!(
        get(&mut fake, "/v1/vms/1").body["stats"]["exits"]["io"],
        total
    );

    // Past the end: nothing, and the end as the next offset.
    let r = get(&mut fake, "/v1/vms/1/console?offset=999999");
    assert_eq!(
        (r.raw.len(), r.header("x-console-next-offset")),
        (0, Some(total.to_string().as_str()))
    );

    for q in [
        "offset=-1",
        "offset=x",
        "offset=",
        "offset=1&x",
        "foo=1",
        "offset=18446744073709551616",
    ] {
        let r = get(&mut fake, &format!("/v1/vms/1/console?{q}"));
        assert_eq!((r.status, r.code()), (400, "invalid_query"), "{q}");
    }
    assert_eq!(get(&mut fake, "/v1/vms/2/console").code(), "vm_not_found");
}

#[test]
fn console_is_bounded_by_the_response_limit() {
    let mut fake = Fake::new(1);
    create(&mut fake, r#"{"name":"a","image":"hello"}"#);
    fake.guest_output(1, &[b'y'; FAKE_CONSOLE]);
    let settings = Settings {
        limits: Limits {
            max_response_bytes: 256 + 5,
            ..Limits::default()
        },
        ..Settings::default()
    };
    let mut ep = Endpoint::new(settings);
    let (r, _) = exchange_ep(
        &mut ep,
        &mut fake,
        &request("GET", "/v1/vms/1/console", None, b""),
    );
    assert_eq!(r[0].raw, b"yyyyy");
    assert_eq!(r[0].header("x-console-next-offset"), Some("5"));
}

#[test]
fn pmu() {
    let mut fake = Fake::new(1);
    create(&mut fake, r#"{"name":"a","image":"hello"}"#);
    let put = |fake: &mut Fake, body: &str| {
        call(
            fake,
            "PUT",
            "/v1/vms/1/pmu",
            Some("application/json"),
            body.as_bytes(),
        )
    };
    let r = put(&mut fake, r#"{"vendor":"intel","version":1}"#);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body["pmu"],
        json!({"vendor":"intel","version":1,"gp_counters":4,"fixed_counters":0,"width":48,"full_width_writes":false})
    );
    let r = put(
        &mut fake,
        r#"{"vendor":"intel","version":1,"fixed_counters":3}"#,
    );
    assert_eq!((r.status, r.code()), (400, "invalid_body"));
    assert!(
        r.message().starts_with("fixed_counters: "),
        "{}",
        r.message()
    );
    let r = put(&mut fake, r#"{"vendor":"amd","kind":"core_ext"}"#);
    assert_eq!((r.status, r.code()), (400, "unsupported"));
    let r = put(&mut fake, r#"{"vendor":"none"}"#);
    assert_eq!(r.body["pmu"], json!({"vendor":"none"}));
    let r = call(
        &mut fake,
        "PUT",
        "/v1/vms/5/pmu",
        Some("application/json"),
        br#"{"vendor":"none"}"#,
    );
    assert_eq!(r.status, 404);
}

#[test]
fn image_upload() {
    let mut fake = Fake::new(1);
    create(&mut fake, r#"{"name":"a","image":"hello"}"#);
    let up = |fake: &mut Fake, body: &[u8]| {
        call(
            fake,
            "PUT",
            "/v1/vms/1/image",
            Some("application/octet-stream"),
            body,
        )
    };
    let r = up(&mut fake, b"MZ\x90\x00");
    assert_eq!(
        (r.status, r.code(), r.message()),
        (400, "bad_image", "not an ELF file")
    );
    assert_eq!(get(&mut fake, "/v1/vms/1").body["image"], "hello");

    // Larger than the JSON body limit, within the upload limit.
    let mut elf = b"\x7fELF".to_vec();
    elf.resize(200 * 1024, 0xAB);
    let r = up(&mut fake, &elf);
    assert_eq!(
        (r.status, r.body["image"].as_str()),
        (200, Some("uploaded"))
    );
    assert_eq!(fake.vms[0].image.as_deref(), Some(&elf[..]));

    post(&mut fake, "/v1/vms/1/start");
    let r = up(&mut fake, &elf);
    assert_eq!(
        (r.status, r.code(), r.message()),
        (
            409,
            "invalid_state",
            "cannot upload an image to a VM that is running; stop it first"
        )
    );
}

/// Issue 18, item 2: an upload to a VM that cannot take one is answered from its head, before
/// any of the body is sent, and the connection closed (as the token check does).
#[test]
fn upload_to_a_running_vm_is_refused_from_the_head() {
    let mut fake = Fake::new(1);
    create(&mut fake, r#"{"name":"a","image":"hello","start":true}"#);
    create(&mut fake, r#"{"name":"b","image":"hello"}"#);
    let ep = Endpoint::new(Settings::default());
    let head = |id: u32, expect: &str| {
        format!(
            "PUT /v1/vms/{id}/image HTTP/1.1\r\nContent-Type: application/octet-stream\r\n\
             Content-Length: 8000000\r\n{expect}\r\n"
        )
    };
    for (id, expect, status, code) in [
        (1, "", 409, "invalid_state"),
        (1, "Expect: 100-continue\r\n", 409, "invalid_state"),
        (9, "", 404, "vm_not_found"),
    ] {
        let mut ep = Endpoint::new(Settings::default());
        let mut conn = ep.conn();
        let h = head(id, expect);
        assert_eq!(conn.feed(h.as_bytes()), h.len());
        let mut out = Vec::new();
        let flow = ep.serve(&mut conn, &mut fake, &mut out);
        let r = read_responses(&out);
        assert_eq!(flow, Flow::Close, "{id} {expect:?}: {out:?}");
        assert_eq!(r.len(), 1, "no 100 Continue before the refusal: {r:?}");
        assert_eq!((r[0].status, r[0].code()), (status, code));
        assert!(!r[0].keep_alive());
        assert!(conn.is_closed());
        // The body that follows anyway is dropped, not buffered.
        assert_eq!(conn.feed(&[0; 4096]), 4096);
        assert_eq!(conn.buffered(), 0);
    }
    // A VM that can take one invites the body (100 Continue) and waits for it.
    let mut ep2 = Endpoint::new(Settings::default());
    let mut conn = ep.conn();
    let h = head(2, "Expect: 100-continue\r\n");
    conn.feed(h.as_bytes());
    let mut out = Vec::new();
    assert_eq!(ep2.serve(&mut conn, &mut fake, &mut out), Flow::Continue);
    assert_eq!(out, b"HTTP/1.1 100 Continue\r\n\r\n");
}

/// Issue 18, item 6: an `uploaded` VM with nothing uploaded cannot start or reset: a state
/// error (409), not a bad request; and a create that would start one leaves nothing behind.
#[test]
fn uploaded_vm_without_an_image_is_a_state_error() {
    let mut fake = Fake::new(1);
    let r = create(&mut fake, r#"{"name":"u","image":"uploaded","start":true}"#);
    assert_eq!((r.status, r.code()), (409, "invalid_state"), "{r:?}");
    assert!(fake.vms.is_empty());
    assert_eq!(
        create(&mut fake, r#"{"name":"u","image":"uploaded"}"#).status,
        201
    );
    for action in ["start", "reset"] {
        let r = post(&mut fake, &format!("/v1/vms/1/{action}"));
        assert_eq!(
            (r.status, r.code(), r.message()),
            (
                409,
                "invalid_state",
                format!(
                    "cannot {action} a VM that has no image yet; upload one first \
                     (PUT /v1/vms/{{id}}/image)"
                )
                .as_str()
            )
        );
    }
}

/// Issue 18, item 6: `""` (no valid name) and `"nope"` (no such image) are the same error.
#[test]
fn every_image_that_is_not_built_in_is_unknown_image() {
    let mut fake = Fake::new(1);
    for image in ["", "nope", "../x", "A"] {
        let r = create(&mut fake, &format!(r#"{{"name":"a","image":"{image}"}}"#));
        assert_eq!((r.status, r.code()), (400, "unknown_image"), "{image:?}");
    }
}

#[test]
fn upload_limit_is_separate_and_the_buffer_grows_only_for_uploads() {
    let mut fake = Fake::new(1);
    create(&mut fake, r#"{"name":"a","image":"hello"}"#);
    let limits = Limits {
        max_body_bytes: 100,
        max_upload_bytes: 1000,
        ..Limits::default()
    };
    let settings = Settings {
        limits,
        ..Settings::default()
    };
    let mut ep = Endpoint::new(settings);
    let mut body = b"\x7fELF".to_vec();
    body.resize(1000, 0);
    let (r, flow) = exchange_ep(
        &mut ep,
        &mut fake,
        &request(
            "PUT",
            "/v1/vms/1/image",
            Some("application/octet-stream"),
            &body,
        ),
    );
    assert_eq!((r[0].status, flow), (200, Flow::Continue));
    body.push(0);
    let (r, flow) = exchange_ep(
        &mut ep,
        &mut fake,
        &request(
            "PUT",
            "/v1/vms/1/image",
            Some("application/octet-stream"),
            &body,
        ),
    );
    assert_eq!(
        (r[0].status, r[0].code(), flow),
        (413, "body_too_large", Flow::Close)
    );
    // The same size on a JSON route is over its own limit.
    let (r, _) = exchange_ep(
        &mut ep,
        &mut fake,
        &request(
            "PUT",
            "/v1/vms/1/pmu",
            Some("application/json"),
            &[b' '; 101],
        ),
    );
    assert_eq!(r[0].status, 413);

    // A connection only takes upload-sized input once an upload's head was accepted.
    let mut conn = Conn::new(limits);
    let junk = vec![b'a'; 10_000];
    assert_eq!(conn.feed(&junk), 8 * 1024 + 100);
    let mut conn = Conn::new(limits);
    let req = request(
        "PUT",
        "/v1/vms/1/image",
        Some("application/octet-stream"),
        &body[..1000],
    );
    let (head, rest) = req.split_at(req.len() - 1000);
    assert_eq!(conn.feed(head), head.len());
    assert_eq!(conn.next_request(), net::Next::NeedMore);
    assert_eq!(conn.feed(rest), rest.len());
    assert!(matches!(conn.next_request(), net::Next::Request(r) if r.body.len() == 1000));
}

#[test]
fn host() {
    let mut fake = Fake::new(3);
    create(&mut fake, r#"{"name":"a","image":"hello","memory_mib":8}"#);
    let r = get(&mut fake, "/v1/host");
    assert_eq!(
        r.body,
        json!({"version":net::api::VERSION,"vendor":"intel","virt":"vmx",
            "features":{"npt":false,"ept":true,"nrips":false,"vpid":true,"asids":65535,"x2apic":true,
                "pmu_version":2,"pmu_gp_counters":4,"pmu_fixed_counters":3,"under_hypervisor":false,
                "tme":false,"virt_unusable":null},
            "tdx":{"supported":false,"reason":"TME not enumerated"},
            "memory":{"total_bytes":64u64<<20,"free_bytes":56u64<<20},
            "uptime_ms":12345,"cpus":3,"vms":1})
    );
}

#[test]
fn metrics() {
    let mut fake = Fake::new(2);
    create(&mut fake, r#"{"name":"web","image":"hello","start":true}"#);
    fake.guest_output(1, b"abc");
    let mut ep = Endpoint::new(Settings::default());
    let input = [
        request("GET", "/v1/health", None, b""),
        request("GET", "/v1/nope", None, b""),
        request("GET", "/v1/nope", None, b""),
        request("GET", "/v1/metrics", None, b""),
    ]
    .concat();
    let (r, _) = exchange_ep(&mut ep, &mut fake, &input);
    let m = &r[3];
    assert_eq!(m.status, 200);
    assert_eq!(
        m.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = String::from_utf8(m.raw.clone()).unwrap();
    for line in [
        "# TYPE hermitage_vm_exits_total counter",
        "hermitage_vm_exits_total{vm=\"1\",name=\"web\",reason=\"io\"} 3",
        "hermitage_vm_exits_total{vm=\"1\",name=\"web\",reason=\"cpuid\"} 0",
        "hermitage_vm_resets_total{vm=\"1\",name=\"web\",trigger=\"port_cf9\"} 0",
        "hermitage_vm_console_bytes_total{vm=\"1\",name=\"web\"} 3",
        "hermitage_vm_state{vm=\"1\",name=\"web\",state=\"running\"} 1",
        "hermitage_vm_state{vm=\"1\",name=\"web\",state=\"paused\"} 0",
        "hermitage_cpu_online{cpu=\"1\"} 1",
        "hermitage_cpu_virt_enabled{cpu=\"0\",virt=\"vmx\"} 1",
        "hermitage_cpu_virt_users{cpu=\"0\"} 1",
        "hermitage_http_responses_total{code=\"200\"} 1",
        "hermitage_http_responses_total{code=\"404\"} 2",
        "hermitage_uptime_seconds 12.345",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
    check_exposition(&text);
    // The metrics response itself is counted once it is sent.
    assert_eq!(ep.stats().responses(net::http::Status::Ok), 2);
}

/// The exposition format's structure: every sample belongs to the family announced by the
/// HELP and TYPE lines before it, families are not split, names and labels are well formed.
fn check_exposition(text: &str) {
    let mut seen = std::collections::HashSet::new();
    let mut current = String::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap();
            assert!(seen.insert(name.to_string()), "family {name} twice");
            current = name.to_string();
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert_eq!(name, current);
            assert!(["counter", "gauge"].contains(&kind));
        } else {
            let name = line.split(['{', ' ']).next().unwrap();
            assert_eq!(name, current, "{line}");
            assert!(name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
            if let Some(labels) = line
                .split_once('{')
                .map(|(_, l)| l.rsplit_once('}').unwrap().0)
            {
                assert!(
                    labels.split(',').all(|kv| {
                        let (k, v) = kv.split_once('=').unwrap();
                        k.bytes().all(|b| b.is_ascii_lowercase())
                            && v.starts_with('"')
                            && v.ends_with('"')
                    }),
                    "{line}"
                );
            }
        }
    }
}

fn authed(token: &str) -> Endpoint {
    let c = hv::config::BootConfig::parse([format!("api_token={token}").as_str()]).unwrap();
    Endpoint::new(Settings::from_boot_config(&c))
}

#[test]
fn bearer_auth() {
    let mut fake = Fake::new(1);
    let mut ep = authed("s3cret");
    let with = |auth: Option<&str>, path: &str| {
        let mut req = format!("GET {path} HTTP/1.1\r\n");
        if let Some(a) = auth {
            req += &format!("Authorization: {a}\r\n");
        }
        req + "\r\n"
    };
    for auth in [
        None,
        Some("Bearer s3cre"),
        Some("Bearer s3cret2"),
        Some("Basic s3cret"),
        Some("s3cret"),
    ] {
        for path in ["/v1/health", "/v1/vms", "/v1/nope", "/v1/vms/x"] {
            let (r, flow) = exchange_ep(&mut ep, &mut fake, with(auth, path).as_bytes());
            assert_eq!(
                (r[0].status, r[0].code()),
                (401, "unauthorized"),
                "{auth:?} {path}"
            );
            assert_eq!(r[0].header("www-authenticate"), Some("Bearer"));
            assert_eq!(flow, Flow::Continue, "a 401 keeps the connection");
        }
    }
    let (r, _) = exchange_ep(
        &mut ep,
        &mut fake,
        with(Some("Bearer s3cret"), "/v1/health").as_bytes(),
    );
    assert_eq!(r[0].status, 200);
    let (r, _) = exchange_ep(
        &mut ep,
        &mut fake,
        with(Some("bearer s3cret"), "/v1/nope").as_bytes(),
    );
    assert_eq!(r[0].status, 404);
    // Bad framing is answered as such before authentication.
    let (r, flow) = exchange_ep(&mut ep, &mut fake, b"GET / HTTP/2.0\r\n\r\n");
    assert_eq!((r[0].status, flow), (505, Flow::Close));
    assert!(fake.log.is_empty());
}

#[test]
fn unauthenticated_uploads_do_not_grow_the_buffer() {
    let mut fake = Fake::new(1);
    create(&mut fake, r#"{"name":"a","image":"hello"}"#);
    let mut ep = authed("s3cret");
    let big = 200 * 1024;
    // The head alone is answered: 401, closed, nothing buffered beyond the default.
    let head = format!(
        "PUT /v1/vms/1/image HTTP/1.1\r\nContent-Type: application/octet-stream\r\nContent-Length: {big}\r\n\r\n"
    );
    let (r, flow) = exchange_ep(&mut ep, &mut fake, head.as_bytes());
    assert_eq!(
        (r[0].status, r[0].code(), flow),
        (401, "unauthorized", Flow::Close)
    );
    assert_eq!(r[0].header("www-authenticate"), Some("Bearer"));
    // With the token the upload goes through.
    let mut body = b"\x7fELF".to_vec();
    body.resize(big, 0);
    let req = [
        format!(
            "PUT /v1/vms/1/image HTTP/1.1\r\nAuthorization: Bearer s3cret\r\nContent-Type: application/octet-stream\r\nContent-Length: {big}\r\n\r\n"
        )
        .into_bytes(),
        body,
    ]
    .concat();
    let (r, _) = exchange_ep(&mut ep, &mut fake, &req);
    assert_eq!(r[0].status, 200);
    // Small bodies are read and then answered 401 as usual, keeping the connection.
    let (r, flow) = exchange_ep(
        &mut ep,
        &mut fake,
        &request(
            "PUT",
            "/v1/vms/1/image",
            Some("application/octet-stream"),
            b"\x7fELF",
        ),
    );
    assert_eq!((r[0].status, flow), (401, Flow::Continue));
}

#[test]
fn transport_answers() {
    let mut ep = Endpoint::new(Settings::default());
    let mut out = Vec::new();
    ep.reject(&mut out);
    ep.timeout(&mut out);
    let r = read_responses(&out);
    assert_eq!(
        (r[0].status, r[0].code(), r[0].keep_alive()),
        (503, "too_many_connections", false)
    );
    assert_eq!(
        (r[1].status, r[1].code(), r[1].keep_alive()),
        (408, "request_timeout", false)
    );
    assert_eq!(
        (ep.stats().rejected_connections, ep.stats().timeouts),
        (1, 1)
    );
}

/// Issue 18, items 2 and 7: a 503 says when to come back, and the defaults serve an ordinary
/// client pool and a Linux kernel plus initramfs.
#[test]
fn busy_answers_retry_after_and_defaults_fit_real_clients() {
    let mut ep = Endpoint::new(Settings::default());
    let mut out = Vec::new();
    ep.reject(&mut out);
    let r = read_responses(&out);
    assert_eq!(r[0].header("retry-after"), Some("1"));
    ep.timeout(&mut out);
    assert_eq!(read_responses(&out)[1].header("retry-after"), None);
    assert_eq!(Settings::default().max_connections, 64);
    assert_eq!(Limits::DEFAULT.max_upload_bytes, 16 << 20);
}

#[test]
fn default_backend_refuses_vm_commands() {
    struct Bare;
    impl net::Backend for Bare {
        fn health(&self) -> net::api::Health<'_> {
            net::api::Health::new("x", 1, net::api::Virt::None)
        }
        fn cpus(&self, _: &mut dyn FnMut(&net::api::CpuInfo<'_>)) {}
        fn cpu(&self, _: u32) -> Result<net::api::CpuInfo<'_>, net::api::CpuError> {
            Err(net::api::CpuError::NotFound)
        }
        fn cpu_online(&mut self, _: u32) -> Result<net::api::CpuInfo<'_>, net::api::CpuError> {
            Err(net::api::CpuError::NotFound)
        }
        fn cpu_offline(&mut self, _: u32) -> Result<net::api::CpuInfo<'_>, net::api::CpuError> {
            Err(net::api::CpuError::NotFound)
        }
        fn reboot(&mut self) -> Result<(), net::api::CpuError> {
            Ok(())
        }
    }
    let mut conn = Conn::new(Limits::default());
    let input = [
        request("GET", "/v1/vms", None, b""),
        request(
            "POST",
            "/v1/vms",
            Some("application/json"),
            br#"{"name":"a","image":"b"}"#,
        ),
        request("GET", "/v1/host", None, b""),
        request("GET", "/v1/metrics", None, b""),
    ]
    .concat();
    conn.feed(&input);
    let mut out = Vec::new();
    net::serve(&mut conn, &mut Bare, &mut out);
    let r = read_responses(&out);
    assert_eq!(r[0].body, json!([]));
    assert_eq!((r[1].status, r[1].code()), (400, "unsupported"));
    assert_eq!(
        (r[2].body["vendor"].as_str(), r[2].body["cpus"].as_u64()),
        (Some("unknown"), Some(1))
    );
    assert_eq!(r[3].status, 200);
}

#[test]
fn the_pmu_route_shows_config_model_registers_and_the_probe_digest() {
    let mut fake = Fake::new(2);
    let r = create(
        &mut fake,
        r#"{"name":"p","image":"hello","pmu":{"vendor":"intel","version":2,"gp_counters":4}}"#,
    );
    assert_eq!(r.status, 201);
    let r = get(&mut fake, "/v1/vms/1/pmu");
    assert_eq!(r.status, 200);
    let doc = r.body;
    assert_eq!(doc["config"]["vendor"], "intel");
    assert_eq!(doc["pending"], serde_json::Value::Null);
    assert_eq!(doc["model"]["version"], 2);
    assert_eq!(doc["model"]["gp_counters"], 4);
    assert_eq!(doc["model"]["global_ctrl_reset"], 0xF);
    assert!(
        doc["model"]["msrs"]
            .as_array()
            .unwrap()
            .contains(&json!(0x38F))
    );
    assert_eq!(doc["registers"]["global_ctrl"], 0xF);
    assert_eq!(doc["registers"]["counters"], json!([0, 0, 0, 0]));
    assert_eq!(doc["backing"], "none");
    let config = hv::vpmu::PmuConfig::intel_with(2, Some(4), None, None, None);
    let digest = hv::vpmu::probe::probe_digest(&config, hv::features::Vendor::Intel);
    assert_eq!(doc["probe_digest"], format!("{digest:#010x}"));
    assert_eq!(get(&mut fake, "/v1/vms/9/pmu").status, 404);
}
