//! `net/openapi.yaml` against the code: the same paths, methods and operationIds as
//! `router::ROUTES`, and every status code documented for an operation actually produced by
//! the code (each one is provoked below against the fake backend; a documented code with no
//! way to provoke it fails the test).

mod common;

use std::collections::BTreeSet;

use common::{Fake, Resp, read_responses};
use hv::vm::VmState;
use net::api::Failure;
use net::router::{BodyKind, Op, ROUTES};
use net::{Endpoint, Flow, Settings};
use serde_yaml::Value;

fn doc() -> Value {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml"))
        .expect("read openapi.yaml");
    serde_yaml::from_str(&text).expect("openapi.yaml parses")
}

const METHODS: [&str; 7] = ["get", "put", "post", "delete", "patch", "head", "options"];

/// (path, method, operationId, documented statuses) for every operation in the document.
fn operations(doc: &Value) -> Vec<(String, String, String, Vec<u16>)> {
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_mapping().expect("paths") {
        let path = path.as_str().unwrap();
        for (method, op) in item.as_mapping().unwrap() {
            let method = method.as_str().unwrap();
            if method == "parameters" {
                continue;
            }
            assert!(METHODS.contains(&method), "{path}: unknown key {method}");
            let id = op["operationId"].as_str().expect("operationId").to_string();
            let statuses = op["responses"]
                .as_mapping()
                .expect("responses")
                .keys()
                .map(|k| k.as_str().unwrap().parse().expect("numeric status"))
                .collect();
            ops.push((path.to_string(), method.to_uppercase(), id, statuses));
        }
    }
    ops
}

#[test]
fn routes_and_document_agree() {
    let doc = doc();
    assert_eq!(doc["openapi"].as_str().map(|v| &v[..2]), Some("3."));
    let documented: BTreeSet<(String, String, String)> = operations(&doc)
        .into_iter()
        .map(|(p, m, id, _)| (p, m, id))
        .collect();
    let coded: BTreeSet<(String, String, String)> = ROUTES
        .iter()
        .map(|r| {
            (
                r.pattern.to_string(),
                r.method.as_str().to_string(),
                r.op.operation_id().to_string(),
            )
        })
        .collect();
    let missing: Vec<_> = coded.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&coded).collect();
    assert!(
        missing.is_empty(),
        "routes not in openapi.yaml: {missing:?}"
    );
    assert!(
        extra.is_empty(),
        "openapi.yaml operations with no route: {extra:?}"
    );
}

#[test]
fn request_bodies_match_body_kinds() {
    let doc = doc();
    for r in ROUTES {
        let op = &doc["paths"][r.pattern][r.method.as_str().to_lowercase().as_str()];
        let content = op["requestBody"]["content"].as_mapping();
        let types: Vec<&str> = content
            .map(|c| c.keys().map(|k| k.as_str().unwrap()).collect())
            .unwrap_or_default();
        let want: Vec<&str> = r.body.media_type().into_iter().collect();
        assert_eq!(types, want, "{} {}", r.method, r.pattern);
        if r.body != BodyKind::None {
            assert_eq!(op["requestBody"]["required"].as_bool(), Some(true));
        }
    }
}

/// The fake every scenario starts from: CPUs 0 and 1 online (the next change of CPU 1 fails),
/// CPU 2 offline (its next online fails); VM 1 "a" created, VM 2 "b" running, VM 3 "p" paused,
/// 48 of 64 MiB used.
fn world() -> Fake {
    let mut fake = Fake::new(3);
    fake.cpus[1].fail = Some(Failure::Timeout);
    fake.cpus[2].online = false;
    fake.cpus[2].users = 0;
    fake.cpus[2].fail = Some(Failure::VirtEnable);
    let mut ep = Endpoint::new(Settings::default());
    for (name, start) in [("a", false), ("b", true), ("p", true)] {
        let body = format!(r#"{{"name":"{name}","image":"hello","start":{start}}}"#);
        let r = send(
            &mut ep,
            &mut fake,
            &req("POST", "/v1/vms", Some(JSON), body.as_bytes()),
        );
        assert_eq!(r.status, 201);
    }
    fake.vm_mut(3).unwrap().state = VmState::Paused;
    fake
}

const JSON: &str = "application/json";

fn req(method: &str, path: &str, ctype: Option<&str>, body: &[u8]) -> Vec<u8> {
    let mut head = format!("{method} {path} HTTP/1.1\r\n");
    if let Some(c) = ctype {
        head += &format!("Content-Type: {c}\r\n");
    }
    head += &format!("Content-Length: {}\r\n\r\n", body.len());
    [head.as_bytes(), body].concat()
}

fn send(ep: &mut Endpoint, fake: &mut Fake, input: &[u8]) -> Resp {
    let mut conn = ep.conn();
    let mut out = Vec::new();
    assert_eq!(conn.feed(input), input.len());
    let flow = ep.serve(&mut conn, fake, &mut out);
    let mut r = read_responses(&out);
    assert_eq!(r.len(), 1, "{}", String::from_utf8_lossy(&out));
    assert_eq!(flow == Flow::Close, !r[0].keep_alive());
    r.pop().unwrap()
}

/// A request that makes `op` answer `status` in [`world`], if the code can do that.
fn provoke(op: Op, status: u16) -> Option<Vec<u8>> {
    let route = net::router::route_of(op);
    let path = |id: &str| route.pattern.replace("{id}", id);
    let ctype = route.body.media_type();
    // A body that the route accepts.
    let good_body: &[u8] = match op {
        Op::CreateVm => br#"{"name":"new","image":"hello","memory_mib":8}"#,
        Op::SetVmPmu => br#"{"vendor":"intel"}"#,
        Op::UploadVmImage => b"\x7fELF....",
        Op::UploadVmInitrd => b"070701...",
        _ => b"",
    };
    let m = route.method.as_str();
    let with = |p: &str| req(m, p, ctype, good_body);
    Some(match (op, status) {
        (_, 401) => return None, // provoked separately, with a token configured
        (Op::Health | Op::Host | Op::Metrics | Op::ListCpus | Op::ListVms, 200) => with(&path("")),
        (Op::Reboot, 202) => with(&path("")),
        (Op::Reboot, 409) => with(&path("")).repeat(2),
        (Op::GetCpu, 200) => with(&path("0")),
        (Op::CpuOnline, 200) => with(&path("2")).repeat(2), // the first fails
        (Op::CpuOffline, 200) => with(&path("1")).repeat(2),
        (Op::CpuOnline, 409) => with(&path("0")),
        (Op::CpuOffline, 409) => with(&path("2")),
        (Op::CpuOnline, 500) => with(&path("2")),
        (Op::CpuOffline, 500) => with(&path("1")),
        (Op::CreateVm, 201) => with(&path("")),
        (Op::CreateVm, 400) => req(m, &path(""), ctype, br#"{"name":"new"}"#),
        (Op::CreateVm, 409) => req(m, &path(""), ctype, br#"{"name":"a","image":"hello"}"#),
        (Op::CreateVm, 507) => req(
            m,
            &path(""),
            ctype,
            br#"{"name":"new","image":"hello","memory_mib":17}"#,
        ),
        (Op::StartVm, 200) => with(&path("1")),
        (Op::PauseVm | Op::StopVm | Op::ResetVm, 200) => with(&path("2")),
        (Op::ResumeVm, 200) => with(&path("3")),
        (Op::StartVm, 409) => with(&path("2")),
        (Op::PauseVm | Op::ResumeVm | Op::StopVm | Op::ResetVm, 409) => with(&path("1")),
        (Op::DeleteVm, 204) => with(&path("1")),
        (Op::DeleteVm, 409) => with(&path("2")),
        (Op::UploadVmImage, 409) => with(&path("2")),
        (Op::UploadVmImage, 400) => req(m, &path("1"), ctype, b"MZ"),
        (Op::UploadVmInitrd, 409) => with(&path("2")),
        (Op::UploadVmInitrd, 400) => req(m, &path("1"), ctype, b"MZ"),
        (Op::SetVmPmu, 400) => req(m, &path("1"), ctype, br#"{"vendor":"intel","width":8}"#),
        (Op::VmConsole, 400) => with(&format!("{}?offset=x", path("1"))),
        (Op::VmConsole, 200) => with(&format!("{}?offset=0&wait_ms=0", path("1"))),
        (Op::VmConsoleInput, 200) => req(m, &path("2"), ctype, b"ls\n"),
        (Op::VmConsoleInput, 409) => req(m, &path("1"), ctype, b"ls\n"),
        (_, 200) if op.takes_id() => with(&path("1")),
        (_, 400) if op.takes_id() => with(&path("x")),
        (Op::GetCpu | Op::CpuOnline | Op::CpuOffline, 404) => with(&path("7")),
        (_, 404) if op.takes_id() => with(&path("99")),
        (_, 413) if ctype.is_some() => {
            let over = net::Limits::DEFAULT.max_upload_bytes + 1;
            req(m, &path("1"), ctype, &vec![b' '; over])
        }
        (_, 415) if ctype.is_some() => req(m, &path("1"), Some("text/plain"), good_body),
        _ => return None,
    })
}

#[test]
fn documented_statuses_are_produced() {
    let doc = doc();
    let mut token_ep = {
        let c = hv::config::BootConfig::parse(["api_token=tok"]).unwrap();
        Endpoint::new(Settings::from_boot_config(&c))
    };
    for (path, method, id, statuses) in operations(&doc) {
        let op = Op::ALL
            .into_iter()
            .find(|o| o.operation_id() == id)
            .unwrap_or_else(|| panic!("{id}: no such op"));
        assert!(
            statuses.contains(&401),
            "{id}: 401 (bearer auth) not documented"
        );
        assert!(
            statuses.iter().any(|s| (200..300).contains(s)),
            "{id}: no success documented"
        );
        for status in statuses {
            let mut fake = world();
            let r = if status == 401 {
                let p = path.replace("{id}", "1");
                send(&mut token_ep, &mut fake, &req(&method, &p, None, b""))
            } else {
                let input = provoke(op, status)
                    .unwrap_or_else(|| panic!("{id}: nothing provokes documented {status}"));
                let mut ep = Endpoint::new(Settings::default());
                let mut conn = ep.conn();
                let mut out = Vec::new();
                let mut rest = &input[..];
                while !rest.is_empty() {
                    let n = conn.feed(rest);
                    rest = &rest[n..];
                    if ep.serve(&mut conn, &mut fake, &mut out) == Flow::Close {
                        break;
                    }
                }
                read_responses(&out).pop().expect("an answer")
            };
            assert_eq!(r.status, status, "{id}: {:?}", r.body);
        }
    }
}

#[test]
fn vm_and_host_documents_have_the_documented_fields() {
    let doc = doc();
    let schemas = &doc["components"]["schemas"];
    let mut fake = world();
    let mut ep = Endpoint::new(Settings::default());
    let vm = send(&mut ep, &mut fake, &req("GET", "/v1/vms/2", None, b"")).body;
    let host = send(&mut ep, &mut fake, &req("GET", "/v1/host", None, b"")).body;
    let keys = |v: &serde_json::Value| -> BTreeSet<String> {
        v.as_object().unwrap().keys().cloned().collect()
    };
    let listed = |v: &Value| -> BTreeSet<String> {
        v.as_sequence()
            .unwrap()
            .iter()
            .map(|k| k.as_str().unwrap().to_string())
            .collect()
    };
    let props = |v: &Value| -> BTreeSet<String> {
        v.as_mapping()
            .unwrap()
            .keys()
            .map(|k| k.as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(keys(&vm), listed(&schemas["Vm"]["required"]));
    assert_eq!(keys(&vm), props(&schemas["Vm"]["properties"]));
    assert_eq!(keys(&vm["stats"]), listed(&schemas["Stats"]["required"]));
    assert_eq!(
        keys(&vm["stats"]["exits"]),
        listed(&schemas["Stats"]["properties"]["exits"]["required"])
    );
    assert_eq!(
        keys(&vm["stats"]["resets"]),
        listed(&schemas["Stats"]["properties"]["resets"]["required"])
    );
    assert_eq!(keys(&host), listed(&schemas["Host"]["required"]));
    assert_eq!(
        keys(&host["features"]),
        props(&schemas["Host"]["properties"]["features"]["properties"])
    );
    let create = props(&schemas["VmCreate"]["properties"]);
    for field in &create {
        let body = format!(r#"{{"name":"z","image":"hello","{field}":{{}}}}"#);
        let r = send(
            &mut ep,
            &mut fake,
            &req("POST", "/v1/vms", Some(JSON), body.as_bytes()),
        );
        // Known fields are refused for their value, never as unknown.
        assert!(
            !r.message().contains("unknown field"),
            "{field}: {}",
            r.message()
        );
    }
}
