//! The control endpoint's transport: smoltcp over our own NIC driver, polled from one thread.
//!
//! A fixed pool of TCP sockets listens on the endpoint port; each carries one `net::Conn`
//! (the HTTP state machine) and an output buffer. Everything about requests is decided in the
//! `net` crate; this file only moves bytes and recycles sockets. No call here can block inside
//! code we do not own, which is what Hermit 0.11.0's own TCP close path did.

#![forbid(unsafe_code)]

use alloc::vec;
use alloc::vec::Vec;

use hv::config::{BootConfig, IpConfig};
use net::{Conn, ConsoleWait, Endpoint, Flow, Settings};
use smoltcp::iface::{
    Config as IfaceConfig, Interface, PollIngressSingleResult, PollResult, SocketHandle, SocketSet,
};
use smoltcp::socket::{dhcpv4, tcp};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{EthernetAddress, IpAddress, IpCidr, Ipv4Address, Ipv4Cidr};

use crate::backend::Hypervisor;
use crate::nic::Nic;

/// Sockets in the pool. A SYN that finds no listening socket is answered with a reset, and
/// sockets linger a little in closing states (LAST-ACK, FIN-WAIT) after each connection, so the
/// pool is the default `http_max_conns` (64) and room for those. Connections beyond
/// `http_max_conns` are accepted on these sockets only to be told `503`.
///
/// Memory: 80 x (64 + 16) KiB = 6.25 MiB of socket buffers, allocated once; a connection's
/// `net::Conn` buffer (72 KiB) exists only while it has bytes to parse.
const SOCKETS: usize = 80;
/// The receive buffer bounds the TCP window we advertise (QEMU's user network does not scale
/// windows, so 64 KiB is the most it can use): with the NIC's burst limit it decides how fast
/// an image upload arrives (16 KiB and a one-segment window gave ~80 KB/s under TCG).
const RX_BUF: usize = 64 * 1024;
const TX_BUF: usize = 16 * 1024;
/// After traffic, keep polling without sleeping for this long (latency); then sleep 10 ms per
/// round (Hermit blocks the thread only for sleeps of 10 ms or more).
const BUSY_POLL: Duration = Duration::from_millis(20);
/// Received frames processed per round before the connections take their data and the ACKs
/// go out: a quarter of the NIC's posted receive buffers, so the peer may refill them while
/// the rest are processed.
const INGEST_BATCH: usize = 16;
/// How often a parked console long-poll looks at its VM's console. Each look takes the VM's
/// lock, which ends the VM's slice at its next exit, so not every round (a busy-polling round
/// takes microseconds); 10 ms is below what a person typing notices.
const LONG_POLL_LOOK: Duration = Duration::from_millis(10);

struct Slot {
    handle: SocketHandle,
    conn: Conn,
    out: Vec<u8>,
    sent: usize,
    close_after: bool,
    last_active: Instant,
    /// Counts against `http_max_conns` (a connection being served; one told `503` does not).
    counted: bool,
    /// A console long-poll waiting for output ([`Flow::Wait`]). The pool is the fixed table
    /// of waits: at most one per connection, so at most [`SOCKETS`].
    parked: Option<Parked>,
}

/// A parked long-poll: the request, when it was parked, when to look at the console next.
#[derive(Clone, Copy)]
struct Parked {
    wait: ConsoleWait,
    since: Instant,
    next_look: Instant,
}

/// What one round allows a connection.
#[derive(Clone, Copy)]
struct Limit {
    idle_timeout: Duration,
    /// A new connection may be served (else it is answered `503` and closed).
    admit: bool,
}

fn now() -> Instant {
    Instant::from_micros(crate::hw::monotonic_micros() as i64)
}

/// Serve the endpoint forever.
pub fn run(mut nic: Nic, config: BootConfig) -> ! {
    let mac = nic.mac();
    println!(
        "hermitage: nic {} mac {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        nic.name(),
        mac[0],
        mac[1],
        mac[2],
        mac[3],
        mac[4],
        mac[5]
    );
    let mut iface_config = IfaceConfig::new(EthernetAddress(mac).into());
    iface_config.random_seed = crate::hw::random_seed();
    let mut iface = Interface::new(iface_config, &mut nic, now());
    let mut sockets = SocketSet::new(Vec::new());

    let dhcp = match config.ip {
        IpConfig::Dhcp => Some(sockets.add(dhcpv4::Socket::new())),
        IpConfig::Static {
            addr,
            prefix,
            gateway,
        } => {
            set_address(
                &mut iface,
                Ipv4Cidr::new(Ipv4Address::from(addr), prefix),
                gateway.map(Ipv4Address::from),
            );
            None
        }
    };

    let mut ep = Endpoint::new(Settings::from_boot_config(&config));
    let idle_timeout = Duration::from_millis(u64::from(ep.settings().idle_timeout_ms));
    let max_conns = ep.settings().max_connections as usize;
    let mut slots: Vec<Slot> = (0..SOCKETS)
        .map(|_| {
            let mut socket = tcp::Socket::new(
                tcp::SocketBuffer::new(vec![0; RX_BUF]),
                tcp::SocketBuffer::new(vec![0; TX_BUF]),
            );
            socket.set_nagle_enabled(false);
            socket.listen(config.port).expect("listen on endpoint port");
            Slot {
                handle: sockets.add(socket),
                conn: ep.conn(),
                out: Vec::with_capacity(TX_BUF),
                sent: 0,
                close_after: false,
                last_active: now(),
                counted: false,
                parked: None,
            }
        })
        .collect();

    let mut hv = Hypervisor;
    let mut ready = dhcp.is_none();
    if ready {
        announce(&iface, config.port);
    }
    let mut last_activity = now();
    loop {
        let t = now();
        // Received frames first, at most a batch, then the connections take what arrived, then
        // the ACKs go out: so an ACK advertises the window with the data already taken out of
        // the socket, and the peer may send on while the rest of a burst is processed. (With
        // `iface.poll` the ACK of a burst went out first, advertising a window still full of
        // unread data; the peer stalled until a window update one round later, about 3 ms per
        // 64 KiB window under TCG.)
        let mut active = false;
        for _ in 0..INGEST_BATCH {
            match iface.poll_ingress_single(t, &mut nic, &mut sockets) {
                PollIngressSingleResult::None => break,
                _ => active = true,
            }
        }

        if let Some(h) = dhcp {
            if let Some(event) = sockets.get_mut::<dhcpv4::Socket>(h).poll() {
                match event {
                    dhcpv4::Event::Configured(c) => {
                        set_address(&mut iface, c.address, c.router);
                        if !ready {
                            ready = true;
                            announce(&iface, config.port);
                        }
                    }
                    dhcpv4::Event::Deconfigured => iface.update_ip_addrs(|a| a.clear()),
                }
            }
        }

        let mut open = slots.iter().filter(|s| s.counted).count();
        for slot in &mut slots {
            let limit = Limit {
                idle_timeout,
                admit: open < max_conns,
            };
            let was = slot.counted;
            active |= service(slot, &mut sockets, &mut hv, &mut ep, config.port, t, limit);
            if slot.counted && !was {
                open += 1;
            }
        }

        // A requested reboot waits until every reply is on the wire (or 200 ms at most).
        if let Some(at) = crate::virt::reboot_requested_at() {
            let drained = slots.iter().all(|s| s.out.is_empty())
                && slots
                    .iter()
                    .all(|s| sockets.get::<tcp::Socket>(s.handle).send_queue() == 0);
            if drained || t.total_micros() as u64 > at + 200_000 {
                crate::virt::reboot();
            }
        }

        // ACKs, window updates and what servicing queued.
        active |= iface.poll_egress(now(), &mut nic, &mut sockets) != PollResult::None;
        if active {
            last_activity = t;
        } else if t - last_activity < BUSY_POLL {
            hermit::syscalls::sys_yield();
        } else {
            hermit::syscalls::sys_usleep(10_000);
        }
    }
}

fn announce(iface: &Interface, port: u16) {
    if let Some(IpCidr::Ipv4(a)) = iface.ip_addrs().first() {
        println!("hermitage: endpoint ready on {}:{port}", a.address());
    }
}

fn set_address(iface: &mut Interface, cidr: Ipv4Cidr, gateway: Option<Ipv4Address>) {
    iface.update_ip_addrs(|addrs| {
        addrs.clear();
        let _ = addrs.push(IpCidr::Ipv4(cidr));
    });
    let routes = iface.routes_mut();
    routes.remove_default_ipv4_route();
    if let Some(gw) = gateway {
        let _ = routes.add_default_ipv4_route(gw);
    }
    let _ = IpAddress::from(cidr.address());
}

/// Move bytes between one socket and its connection. Returns whether anything happened.
fn service(
    slot: &mut Slot,
    sockets: &mut SocketSet<'_>,
    hv: &mut Hypervisor,
    ep: &mut Endpoint,
    port: u16,
    t: Instant,
    limit: Limit,
) -> bool {
    let socket = sockets.get_mut::<tcp::Socket>(slot.handle);
    let mut active = false;

    match socket.state() {
        tcp::State::Listen | tcp::State::SynReceived => return false,
        // The peer is gone, or we closed first and wait out TIME-WAIT: recycle the socket at
        // once (a late retransmitted FIN then gets a reset, which clients ignore).
        tcp::State::Closed | tcp::State::TimeWait => {
            recycle(slot, socket, port);
            return true;
        }
        _ => {}
    }

    // A new connection: served if there is room, else told 503 and closed once that is sent.
    if !slot.counted && !slot.close_after {
        slot.last_active = t;
        if limit.admit {
            slot.counted = true;
        } else {
            ep.reject(&mut slot.out);
            slot.close_after = true;
        }
    }

    // A parked long-poll is answered once its VM's console has grown or its time is up; until
    // then the requests behind it wait (in the connection's buffer) and it is not idle.
    if let Some(p) = slot.parked {
        slot.last_active = t;
        if t >= p.next_look {
            let elapsed = (t - p.since).total_millis();
            if ep.resume(&p.wait, elapsed, hv, &mut slot.out) {
                slot.parked = None;
                active = true;
            } else if let Some(p) = slot.parked.as_mut() {
                p.next_look = t + LONG_POLL_LOOK;
            }
        }
    }

    // Receive what fits into the connection's buffer. A closed connection takes (and drops)
    // everything, so that a client still sending a body it was refused (an upload answered
    // from its head) is not stalled by a full window before it reads the answer.
    while socket.can_recv() {
        let taken = socket.recv(|data| {
            let n = slot.conn.feed(data);
            (n, n)
        });
        match taken {
            Ok(0) | Err(_) => break,
            Ok(_) => active = true,
        }
        // Answer what is complete before taking more, so a full buffer drains.
        if slot.out.len() == slot.sent && slot.parked.is_none() {
            produce(slot, hv, ep, t);
        }
    }
    if slot.out.len() == slot.sent && slot.parked.is_none() {
        produce(slot, hv, ep, t);
    }

    // Send pending output.
    if slot.sent < slot.out.len() && socket.can_send() {
        if let Ok(n) = socket.send_slice(&slot.out[slot.sent..]) {
            slot.sent += n;
            active |= n > 0;
        }
    }
    if slot.sent == slot.out.len() && !slot.out.is_empty() {
        slot.out.clear();
        slot.sent = 0;
    }

    let idle = t - slot.last_active > limit.idle_timeout;
    if active {
        slot.last_active = t;
    }
    // Idle too long: say so (unless a response is half sent), then close below.
    if idle && !slot.close_after {
        if slot.sent == 0 {
            slot.out.clear();
            ep.timeout(&mut slot.out);
        }
        slot.close_after = true;
        slot.last_active = t;
        return true;
    }
    // Still idle after the 408 had its chance to go out: give up on the peer.
    let idle = idle && slot.close_after;
    // A parked long-poll still owes its answer (its connection may already be "closed" for
    // further requests, by `Connection: close`).
    let drained = slot.out.is_empty() && slot.parked.is_none();
    let peer_done = !socket.may_recv();
    if drained && (slot.close_after || peer_done || slot.conn.is_closed()) || idle {
        if socket.is_open()
            && socket.state() != tcp::State::FinWait1
            && socket.state() != tcp::State::FinWait2
        {
            socket.close();
            active = true;
        }
        if idle {
            socket.abort();
        }
    }
    active
}

/// Run every complete request buffered in the connection (up to a long-poll, which parks).
fn produce(slot: &mut Slot, hv: &mut Hypervisor, ep: &mut Endpoint, t: Instant) {
    if slot.close_after {
        return;
    }
    let before = slot.out.len();
    let flow = ep.serve(&mut slot.conn, hv, &mut slot.out);
    crate::trace::api(&slot.out[before..]);
    match flow {
        Flow::Close => slot.close_after = true,
        Flow::Wait(wait) => {
            slot.parked = Some(Parked {
                wait,
                since: t,
                next_look: t + LONG_POLL_LOOK,
            })
        }
        Flow::Continue => {}
    }
}

fn recycle(slot: &mut Slot, socket: &mut tcp::Socket<'_>, port: u16) {
    socket.abort();
    slot.conn.reset();
    slot.out.clear();
    slot.sent = 0;
    slot.close_after = false;
    slot.counted = false;
    slot.parked = None;
    let _ = socket.listen(port);
}
