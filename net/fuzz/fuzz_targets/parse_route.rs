//! Bytes -> `Conn` -> `Endpoint::serve` against the tests' fake hypervisor (with VMs), and
//! every output must read back as well-formed responses (the same checker as the host tests,
//! `net/tests/common`), whatever the input and however it is split into feeds.
//!
//! Input layout: byte 0 picks the settings (bit 0: a bearer token is configured; bit 1: tight
//! limits), byte 1 seeds where the rest is cut into feeds; the rest is the stream.
#![no_main]

#[path = "../../tests/common/mod.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use net::http::Limits;
use net::{Endpoint, Flow, Settings};

fuzz_target!(|data: &[u8]| {
    let [mode, seed, stream @ ..] = data else {
        return;
    };
    let mut settings = Settings::default();
    if mode & 1 != 0 {
        let c = hv::config::BootConfig::parse(["api_token=fuzz"]).unwrap();
        settings = Settings::from_boot_config(&c);
    }
    if mode & 2 != 0 {
        settings.limits = Limits {
            max_headers: 4,
            max_head_bytes: 128,
            max_body_bytes: 64,
            max_upload_bytes: 256,
            max_response_bytes: 1024,
        };
    }
    let mut ep = Endpoint::new(settings);
    let mut fake = common::Fake::new(3);
    // A VM to act on, so that VM routes get past 404.
    let create = b"POST /v1/vms HTTP/1.1\r\nAuthorization: Bearer fuzz\r\nContent-Type: application/json\r\nContent-Length: 41\r\n\r\n{\"name\":\"f\",\"image\":\"hello\",\"start\":true}";
    let mut conn = ep.conn();
    let mut out = Vec::new();
    conn.feed(create);
    ep.serve(&mut conn, &mut fake, &mut out);

    let mut conn = ep.conn();
    let mut out = Vec::new();
    let step = usize::from(*seed).max(1);
    let mut rest = stream;
    let mut flow = Flow::Continue;
    while !rest.is_empty() && flow == Flow::Continue {
        let n = conn.feed(&rest[..rest.len().min(step)]);
        rest = &rest[n..];
        loop {
            let mut sent = Vec::new();
            flow = ep.serve(&mut conn, &mut fake, &mut sent);
            if sent.is_empty() || flow == Flow::Close {
                out.extend_from_slice(&sent);
                break;
            }
            out.extend_from_slice(&sent);
        }
        if n == 0 && conn.buffered() > 0 && flow == Flow::Continue {
            // Full of a request that cannot complete within the limits: the parser must have
            // answered it; taking nothing while answering nothing would wedge the connection.
            panic!("connection wedged");
        }
    }
    let resps = common::read_responses(&out);
    if let Some((last, init)) = resps.split_last() {
        assert!(init.iter().all(|r| r.keep_alive()));
        assert_eq!(!last.keep_alive(), flow == Flow::Close);
    }
});
