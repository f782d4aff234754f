//! The endpoint over std TCP, with the tests' fake hypervisor: a reference transport and a
//! target for `tests/system/hostile.py` without booting an image.
//!
//! It does, single-threaded and non-blocking, what the kernel's smoltcp transport must do:
//! feed received bytes to a [`Conn`] (keeping what it did not take), answer with
//! [`Endpoint::serve`] whenever the previous output is sent, refuse a connection over
//! `http_max_conns` with [`Endpoint::reject`] (503), close one idle for `http_idle_ms` with
//! [`Endpoint::timeout`] (408), and close after [`Flow::Close`] once the output is sent: write
//! side first, then drain what the client still sends for a moment, so that the client reads
//! the answer instead of a reset.
//!
//! ```text
//! cargo run -p hermitage-net --example serve -- 127.0.0.1:8080 api_token=secret http_max_conns=4
//! ```
//!
//! The words after the address are kernel command-line words ([`hv::config::BootConfig`]); the
//! fake has 2 CPUs and VM 1 `hello-1` running.

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use net::{Backend, Conn, ConsoleWait, Endpoint, Flow, Settings};

struct Slot {
    stream: TcpStream,
    conn: Conn,
    /// Received and not yet taken by the connection.
    pending: Vec<u8>,
    out: Vec<u8>,
    sent: usize,
    close_after: bool,
    /// Write side shut: reading and discarding until the peer closes or this deadline.
    draining: Option<Instant>,
    last_active: Instant,
    /// A parked console long-poll ([`Flow::Wait`]) and when it was parked.
    wait: Option<(ConsoleWait, Instant)>,
}

const LINGER: Duration = Duration::from_secs(2);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (addr, words) = match args.first() {
        Some(a) if a.contains(':') => (a.clone(), &args[1..]),
        _ => ("127.0.0.1:8080".to_string(), &args[..]),
    };
    let config = match hv::config::BootConfig::parse(words.iter().map(String::as_str)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("serve: {e}");
            std::process::exit(2);
        }
    };
    let settings = Settings::from_boot_config(&config);
    let max_conns = settings.max_connections as usize;
    let idle = Duration::from_millis(u64::from(settings.idle_timeout_ms));
    let mut ep = Endpoint::new(settings);
    let mut fake = common::Fake::new(2);
    let vm = hv::vm::VmConfig::new("hello-1", "hello", 16).unwrap();
    fake.vm_create(vm, hv::vpmu::PmuConfig::Off, true).unwrap();
    fake.guest_output(1, b"Hello from a Hermitage guest!\n");

    let listener = TcpListener::bind(&addr).expect("bind");
    listener.set_nonblocking(true).expect("non-blocking");
    println!(
        "hermitage: endpoint ready on {}",
        listener.local_addr().unwrap()
    );

    let mut slots: Vec<Slot> = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let mut active = false;
        loop {
            match listener.accept() {
                Ok((stream, _)) => {
                    active = true;
                    let _ = stream.set_nodelay(true);
                    let open = slots.iter().filter(|s| s.draining.is_none()).count();
                    if open >= max_conns {
                        let mut out = Vec::new();
                        ep.reject(&mut out);
                        let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
                        let _ = (&stream).write_all(&out);
                        let _ = stream.shutdown(Shutdown::Write);
                        let _ = stream.set_nonblocking(true);
                        slots.push(Slot::draining(stream, ep.conn()));
                        continue;
                    }
                    stream.set_nonblocking(true).expect("non-blocking");
                    slots.push(Slot {
                        stream,
                        conn: ep.conn(),
                        pending: Vec::new(),
                        out: Vec::new(),
                        sent: 0,
                        close_after: false,
                        draining: None,
                        last_active: Instant::now(),
                        wait: None,
                    });
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => {
                    eprintln!("serve: accept: {e}");
                    break;
                }
            }
        }
        let now = Instant::now();
        slots.retain_mut(|s| {
            let (keep, act) = s.service(&mut ep, &mut fake, &mut buf, now, idle);
            active |= act;
            keep
        });
        if !active {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl Slot {
    fn draining(stream: TcpStream, conn: Conn) -> Slot {
        Slot {
            stream,
            conn,
            pending: Vec::new(),
            out: Vec::new(),
            sent: 0,
            close_after: true,
            draining: Some(Instant::now() + LINGER),
            last_active: Instant::now(),
            wait: None,
        }
    }

    /// What [`Endpoint::serve`] said: close after the output, or park a long-poll.
    fn served(&mut self, flow: Flow, now: Instant) {
        match flow {
            Flow::Close => self.close_after = true,
            Flow::Wait(w) => self.wait = Some((w, now)),
            Flow::Continue => {}
        }
    }

    /// Moves bytes for one connection; returns (keep the slot, something happened).
    fn service(
        &mut self,
        ep: &mut Endpoint,
        fake: &mut common::Fake,
        buf: &mut [u8],
        now: Instant,
        idle: Duration,
    ) -> (bool, bool) {
        if let Some(deadline) = self.draining {
            return match (&self.stream).read(buf) {
                Ok(0) => (false, true),
                Ok(_) => (now < deadline, true),
                Err(e) if e.kind() == ErrorKind::WouldBlock => (now < deadline, false),
                Err(_) => (false, true),
            };
        }
        let mut active = false;
        let mut peer_done = false;
        // A parked long-poll: answer it once the console has grown or its time is up (the
        // loop comes by every millisecond or so). Meanwhile it is not idle.
        if let Some((w, since)) = self.wait {
            if self.sent == self.out.len() {
                let mut out = Vec::new();
                let elapsed = (now - since).as_millis() as u64;
                if ep.resume(&w, elapsed, fake, &mut out) {
                    self.wait = None;
                    self.out = out;
                    self.sent = 0;
                    active = true;
                }
            }
            self.last_active = now;
        }
        // Receive while the connection takes input and nothing is waiting to be sent.
        while !self.close_after && self.wait.is_none() && self.sent == self.out.len() {
            if self.pending.is_empty() {
                match (&self.stream).read(buf) {
                    Ok(0) => {
                        peer_done = true;
                        break;
                    }
                    Ok(n) => self.pending.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => return (false, true),
                }
            }
            active = true;
            let taken = self.conn.feed(&self.pending);
            self.pending.drain(..taken);
            self.out.clear();
            self.sent = 0;
            let flow = ep.serve(&mut self.conn, fake, &mut self.out);
            self.served(flow, now);
            if (taken == 0 && self.out.is_empty()) || self.wait.is_some() {
                break;
            }
        }
        // Answers held back by output back-pressure.
        let free = !self.close_after && self.wait.is_none() && self.sent == self.out.len();
        if free && self.conn.buffered() > 0 {
            self.out.clear();
            self.sent = 0;
            let flow = ep.serve(&mut self.conn, fake, &mut self.out);
            self.served(flow, now);
        }
        let idle_now = now - self.last_active > idle && self.wait.is_none();
        if self.sent == self.out.len() && !self.close_after && idle_now {
            // Idle: say so unless a response is half sent, then close.
            self.out.clear();
            self.sent = 0;
            ep.timeout(&mut self.out);
            self.close_after = true;
        }
        while self.sent < self.out.len() {
            match (&self.stream).write(&self.out[self.sent..]) {
                Ok(0) => return (false, true),
                Ok(n) => {
                    self.sent += n;
                    active = true;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => return (false, true),
            }
        }
        if active {
            self.last_active = now;
        }
        let drained = self.sent == self.out.len();
        if drained && (self.close_after || peer_done) {
            let _ = self.stream.shutdown(Shutdown::Write);
            if peer_done {
                return (false, true);
            }
            self.draining = Some(now + LINGER);
        }
        (true, active)
    }
}
