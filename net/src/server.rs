//! Route -> backend -> JSON -> response bytes.
//!
//! [`Endpoint`] is what a transport holds: the [`Settings`] (limits, token, connection bounds)
//! and the HTTP counters that `GET /v1/metrics` reports. [`Endpoint::serve`] is the loop a
//! transport calls per connection; [`Endpoint::reject`] and [`Endpoint::timeout`] write the two
//! answers the transport sends on its own before closing a connection (too many connections:
//! 503; idle too long: 408). The free functions [`serve`] and [`handle`] are the same without
//! authentication and without counters (for callers that compose their own flow, and tests).
//!
//! Per request, in order: authentication (401) -> route (404/405/501/400) -> `Content-Type`
//! of the body against the route's [`router::BodyKind`] (415) -> body or query (400) -> backend ->
//! response.
//!
//! Responses are appended to a caller's `Vec<u8>`. Each is bounded by
//! [`Limits::max_response_bytes`]: a reply that would not fit is replaced by a small
//! `500 response_too_large` error. The JSON is written straight into the vector's tail (no
//! scratch buffer), and the head is written once the body's length is known and rotated in
//! front of it.

use alloc::vec::Vec;

use serde::Serialize;

use hv::config::{ApiToken, BootConfig};

use crate::api::{Backend, CpuError, CpuInfo, VmError, VmInfo};
use crate::error::{ApiError, Context, ErrorBody};
use crate::http::{
    Conn, Head, HeaderValue, JSON, Limits, Methods, Next, Request, Status, write_head,
};
use crate::json::{HostJson, StatsJson, VmJson};
use crate::metrics::HttpStats;
use crate::router::{self, Command};

/// What the transport does after [`serve`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Flow {
    /// Send the output, keep the connection, and call [`serve`] again after the next
    /// [`Conn::feed`] or once the output has been sent (more pipelined requests may be waiting
    /// for room in the output).
    Continue,
    /// Send the output, then close the connection: the client asked for it or sent something
    /// that was not a valid request. Nothing more will be read.
    Close,
    /// A console long-poll (`GET /v1/vms/{id}/console?wait_ms=T`) found nothing new: send the
    /// output (answers to the requests before it), keep the wait, and call
    /// [`Endpoint::resume`] with it from time to time until it answers (at the latest once
    /// `wait_ms` have passed). Until then do not call [`serve`] for this connection: requests
    /// pipelined behind the wait are answered after it, in order. Keep receiving meanwhile,
    /// and do not count the connection as idle.
    Wait(ConsoleWait),
}

/// The longest console long-poll, in milliseconds (`wait_ms` above it is 400 `invalid_query`).
pub const CONSOLE_WAIT_MAX_MS: u32 = 30_000;

/// A parked console long-poll: what [`Endpoint::resume`] needs to answer it later. Small and
/// `Copy`, so that a transport keeps one per connection in a fixed table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConsoleWait {
    /// The VM.
    pub id: u32,
    /// The offset asked for: the wait ends once the console has a byte at or past it.
    pub offset: u64,
    /// How long to wait at most, from when [`serve`] returned this.
    pub wait_ms: u32,
    keep_alive: bool,
}

/// Everything configurable about the endpoint. Build with [`Settings::default`] or
/// [`Settings::from_boot_config`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Per-connection limits ([`Limits::DEFAULT`]).
    pub limits: Limits,
    /// The bearer token every request must carry; `None` (default): no authentication.
    pub token: Option<ApiToken>,
    /// Most connections open at once (default [`Settings::DEFAULT_MAX_CONNECTIONS`]). Enforced
    /// by the transport: one more is sent [`Endpoint::reject`] and closed.
    pub max_connections: u32,
    /// A connection with no traffic for this long is closed (default
    /// [`Settings::DEFAULT_IDLE_MS`]). Enforced by the transport: it sends
    /// [`Endpoint::timeout`] if nothing is being answered, then closes.
    pub idle_timeout_ms: u32,
}

impl Settings {
    /// Default [`Settings::max_connections`].
    ///
    /// 64 serves an ordinary client pool (20 keep-alive clients saw 11% 503s at 16). Each
    /// served connection costs its socket buffers in the transport and, while it sends a
    /// request, its [`Conn`] buffer (72 KiB by default, allocated on first bytes).
    pub const DEFAULT_MAX_CONNECTIONS: u32 = 64;
    /// `Retry-After` of a 503 `too_many_connections`, in seconds.
    pub const RETRY_AFTER_SECONDS: u64 = 1;
    /// Default [`Settings::idle_timeout_ms`]: 30 s.
    pub const DEFAULT_IDLE_MS: u32 = 30_000;

    /// The kernel command line's `api_token=` and `http_*=` values over the defaults (the keys
    /// and their ranges are documented in [`hv::config`]).
    pub fn from_boot_config(c: &BootConfig) -> Settings {
        let h = &c.http;
        let d = Limits::DEFAULT;
        let or = |v: Option<u32>, default: usize| v.map_or(default, |n| n as usize);
        Settings {
            limits: Limits {
                max_headers: or(h.max_headers, d.max_headers),
                max_head_bytes: or(h.max_head_bytes, d.max_head_bytes),
                max_body_bytes: or(h.max_body_bytes, d.max_body_bytes),
                max_upload_bytes: or(h.max_upload_bytes, d.max_upload_bytes),
                max_response_bytes: d.max_response_bytes,
            },
            token: c.api_token.clone(),
            max_connections: h.max_conns.unwrap_or(Self::DEFAULT_MAX_CONNECTIONS),
            idle_timeout_ms: h.idle_ms.unwrap_or(Self::DEFAULT_IDLE_MS),
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            limits: Limits::DEFAULT,
            token: None,
            max_connections: Self::DEFAULT_MAX_CONNECTIONS,
            idle_timeout_ms: Self::DEFAULT_IDLE_MS,
        }
    }
}

/// The endpoint: settings and counters, shared by all connections of one transport.
#[derive(Debug, Default)]
pub struct Endpoint {
    settings: Settings,
    stats: HttpStats,
}

impl Endpoint {
    /// An endpoint with these settings and zero counters.
    pub fn new(settings: Settings) -> Self {
        Endpoint {
            settings,
            stats: HttpStats::default(),
        }
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The counters.
    pub fn stats(&self) -> &HttpStats {
        &self.stats
    }

    /// A fresh connection with the endpoint's limits.
    pub fn conn(&self) -> Conn {
        Conn::with_token(self.settings.limits, self.settings.token.clone())
    }

    /// Answers a parked console long-poll ([`Flow::Wait`]) if it is due: when the VM's console
    /// has bytes at or past the offset (or the offset is no longer where the console ends: the
    /// VM was reset or deleted, a 404 then), or once `elapsed_ms >= wait_ms` (then with no
    /// bytes, and the same `X-Console-Next-Offset` as an immediate read). Returns whether it
    /// answered (appending to `out`); then the transport sends `out` and goes on with
    /// [`Endpoint::serve`]. Each call looks at the console once, so a transport should call
    /// it every few milliseconds, not in a tight loop: every look takes the VM's lock.
    pub fn resume<B: Backend + ?Sized>(
        &mut self,
        wait: &ConsoleWait,
        elapsed_ms: u64,
        backend: &mut B,
        out: &mut Vec<u8>,
    ) -> bool {
        let expired = elapsed_ms >= u64::from(wait.wait_ms);
        if !expired && console_ready(&*backend, wait.id, wait.offset) == Ok(false) {
            return false;
        }
        let max = self.settings.limits.max_response_bytes;
        let status = match write_console(out, wait.keep_alive, max, &*backend, wait.id, wait.offset)
        {
            Ok(status) => status,
            Err(e) => {
                let mut path = heapless::String::<40>::new();
                let _ = core::fmt::write(&mut path, format_args!("/v1/vms/{}/console", wait.id));
                let ctx = Context {
                    method: crate::http::Method::Get,
                    path: &path,
                };
                write_error(out, e, Some(ctx), wait.keep_alive)
            }
        };
        self.stats.record(status);
        true
    }

    /// Answers every complete request buffered in `conn` ([`serve`], with authentication and
    /// counting).
    pub fn serve<B: Backend + ?Sized>(
        &mut self,
        conn: &mut Conn,
        backend: &mut B,
        out: &mut Vec<u8>,
    ) -> Flow {
        let token = self.settings.token.as_ref();
        serve_with(conn, backend, out, token, Some(&mut self.stats))
    }

    /// Appends the 503 `too_many_connections` answer for a connection the transport will not
    /// serve; send it, then close.
    pub fn reject(&mut self, out: &mut Vec<u8>) {
        self.stats.rejected_connections = self.stats.rejected_connections.saturating_add(1);
        self.stats
            .record(write_error(out, ApiError::TooManyConnections, None, false));
    }

    /// Appends the 408 `request_timeout` answer for a connection idle longer than
    /// [`Settings::idle_timeout_ms`]; send it (if no response is half sent), then close.
    pub fn timeout(&mut self, out: &mut Vec<u8>) {
        self.stats.timeouts = self.stats.timeouts.saturating_add(1);
        self.stats
            .record(write_error(out, ApiError::RequestTimeout, None, false));
    }
}

/// Answers every complete request buffered in `conn`, in order, appending the responses to
/// `out`, with no authentication and no counters (see [`Endpoint::serve`]).
///
/// Stops early, with [`Flow::Continue`], once `out` holds [`Limits::max_response_bytes`] or more,
/// so that pipelined requests cannot make the output grow without bound.
///
/// `GET /v1/metrics` then reports no HTTP responses: there is nowhere to keep them.
pub fn serve<B: Backend + ?Sized>(conn: &mut Conn, backend: &mut B, out: &mut Vec<u8>) -> Flow {
    serve_with(conn, backend, out, None, None)
}

fn serve_with<B: Backend + ?Sized>(
    conn: &mut Conn,
    backend: &mut B,
    out: &mut Vec<u8>,
    token: Option<&ApiToken>,
    mut stats: Option<&mut HttpStats>,
) -> Flow {
    let limits = *conn.limits();
    let none = HttpStats::default();
    while out.len() < limits.max_response_bytes {
        match conn.next_request() {
            Next::Request(req) => {
                let authorized =
                    token.is_none_or(|t| crate::auth::authorized(t, req.authorization));
                let refused = if authorized && req.method == crate::http::Method::Put {
                    upload_refusal(&*backend, req.path, req.content_type)
                } else {
                    None
                };
                let status = match refused {
                    Some(e) => {
                        let ctx = Context {
                            method: req.method,
                            path: req.path,
                        };
                        write_error(out, e, Some(ctx), false)
                    }
                    None => {
                        let seen = stats.as_deref().unwrap_or(&none);
                        match answer(backend, &req, &limits, out, token, seen, true) {
                            Reply::Sent(status) => status,
                            // Counted when it is answered.
                            Reply::Wait(w) => return Flow::Wait(w),
                        }
                    }
                };
                if let Some(s) = stats.as_deref_mut() {
                    s.record(status);
                }
                if refused.is_some() {
                    conn.close();
                    return Flow::Close;
                }
            }
            Next::Error(e) => {
                let status = write_error(out, ApiError::Parse(e), None, false);
                if let Some(s) = stats {
                    s.record(status);
                }
                return Flow::Close;
            }
            Next::NeedMore => {
                if let Some(status) = refuse_upload(conn, backend, out) {
                    if let Some(s) = stats {
                        s.record(status);
                    }
                    conn.close();
                    return Flow::Close;
                }
                if conn.take_continue() {
                    out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                }
                return Flow::Continue;
            }
            Next::Closed => return Flow::Close,
        }
    }
    if conn.is_closed() {
        Flow::Close
    } else {
        Flow::Continue
    }
}

/// Why an upload is refused from its head alone, if it is: a wrong `Content-Type` (415) or a
/// VM that cannot take an image now ([`Backend::vm_upload_allowed`]). Asked while its body is
/// still to come ([`Conn::take_upload_check`]), and again for a complete one, so that the
/// answer does not depend on how the bytes arrived: either way it closes the connection, as
/// the body may not have been read.
fn upload_refusal<B: Backend + ?Sized>(
    backend: &B,
    path: &str,
    content_type: Option<&str>,
) -> Option<ApiError> {
    let id = match router::route(crate::http::Method::Put, path) {
        Ok(Command::UploadVmImage(id) | Command::UploadVmInitrd(id)) => id,
        _ => return None,
    };
    let want = router::BodyKind::Upload.media_type()?;
    if !media_type_is(content_type, want) {
        return Some(ApiError::UnsupportedMediaType(want));
    }
    backend.vm_upload_allowed(id).err().map(ApiError::Vm)
}

/// [`upload_refusal`] for the upload head at the front of `conn`, if any; answers it and
/// returns the status sent.
fn refuse_upload<B: Backend + ?Sized>(
    conn: &mut Conn,
    backend: &B,
    out: &mut Vec<u8>,
) -> Option<Status> {
    let head = conn.take_upload_check()?;
    let e = upload_refusal(backend, head.path, head.content_type)?;
    let ctx = Context {
        method: crate::http::Method::Put,
        path: head.path,
    };
    Some(write_error(out, e, Some(ctx), false))
}

/// Answers one request without authentication: route it, run the command on `backend`,
/// append the response to `out`. Returns the status sent. A console long-poll is answered at
/// once, as if its wait had passed (there is nowhere to park it).
pub fn handle<B: Backend + ?Sized>(
    backend: &mut B,
    req: &Request<'_>,
    limits: &Limits,
    out: &mut Vec<u8>,
) -> Status {
    match answer(
        backend,
        req,
        limits,
        out,
        None,
        &HttpStats::default(),
        false,
    ) {
        Reply::Sent(status) => status,
        // Not reached with `may_wait` false.
        Reply::Wait(_) => Status::InternalServerError,
    }
}

/// What [`answer`] did with a request.
enum Reply {
    /// Answered with this status.
    Sent(Status),
    /// A console long-poll with nothing to send yet: parked, nothing written.
    Wait(ConsoleWait),
}

fn answer<B: Backend + ?Sized>(
    backend: &mut B,
    req: &Request<'_>,
    limits: &Limits,
    out: &mut Vec<u8>,
    token: Option<&ApiToken>,
    stats: &HttpStats,
    may_wait: bool,
) -> Reply {
    let ctx = Context {
        method: req.method,
        path: req.path,
    };
    let keep_alive = req.keep_alive;
    let authorized = token.is_none_or(|t| crate::auth::authorized(t, req.authorization));
    let result = if !authorized {
        Err(ApiError::Unauthorized)
    } else {
        match long_poll(&*backend, req, may_wait) {
            Ok(Some(wait)) => return Reply::Wait(wait),
            Ok(None) => run(backend, req, limits, out, stats),
            Err(e) => Err(e),
        }
    };
    Reply::Sent(match result {
        Ok(status) => status,
        Err(e) => write_error(out, e, Some(ctx), keep_alive),
    })
}

/// A console read that asks to wait (`wait_ms` > 0) and finds nothing new: the wait to park.
/// Anything else (another route, a bad query, no such VM, bytes to send) is for [`run`].
fn long_poll<B: Backend + ?Sized>(
    backend: &B,
    req: &Request<'_>,
    may_wait: bool,
) -> Result<Option<ConsoleWait>, ApiError> {
    let Ok(Command::VmConsole(id)) = router::route(req.method, req.path) else {
        return Ok(None);
    };
    let q = console_query(req.query)?;
    if !may_wait || q.wait_ms == 0 || console_ready(backend, id, q.offset)? {
        return Ok(None);
    }
    Ok(Some(ConsoleWait {
        id,
        offset: q.offset,
        wait_ms: q.wait_ms,
        keep_alive: req.keep_alive,
    }))
}

/// Whether a console read from `offset` would answer something other than "nothing yet": a
/// byte at or past `offset`, or a next offset that differs from it (bytes lost to the ring,
/// or an offset past the end: the client resynchronises at once instead of waiting).
fn console_ready<B: Backend + ?Sized>(backend: &B, id: u32, offset: u64) -> Result<bool, ApiError> {
    let mut probe = [0u8; 1];
    let r = backend.vm_console(id, offset, &mut probe)?;
    Ok(r.copied > 0 || r.next_offset != offset)
}

fn run<B: Backend + ?Sized>(
    backend: &mut B,
    req: &Request<'_>,
    limits: &Limits,
    out: &mut Vec<u8>,
    stats: &HttpStats,
) -> Result<Status, ApiError> {
    let command = router::route(req.method, req.path)?;
    let body_kind = router::route_of(command.op()).body;
    if let Some(want) = body_kind.media_type() {
        if !media_type_is(req.content_type, want) {
            return Err(ApiError::UnsupportedMediaType(want));
        }
    }
    // Only the console reads the query; elsewhere one is ignored, as is usual.
    let ka = req.keep_alive;
    let max = limits.max_response_bytes;
    let ok = Status::Ok;
    match command {
        Command::Health => write_json(out, ok, ka, max, &backend.health()),
        Command::ListCpus => write_cpus(out, ka, max, &*backend),
        Command::GetCpu(id) => cpu_reply(out, ka, max, backend.cpu(id)),
        Command::CpuOnline(id) => cpu_reply(out, ka, max, backend.cpu_online(id)),
        Command::CpuOffline(id) => cpu_reply(out, ka, max, backend.cpu_offline(id)),
        Command::Reboot => {
            backend.reboot()?;
            let body = crate::api::Rebooting {
                status: "rebooting",
            };
            write_json(out, Status::Accepted, ka, max, &body)
        }
        Command::Host => write_json(out, ok, ka, max, &HostJson(&backend.host())),
        Command::Metrics => write_metrics(out, ka, max, &*backend, stats),
        Command::ListVms => write_vms(out, ka, max, &*backend),
        Command::CreateVm => {
            let c = crate::body::parse_create(req.body).map_err(image_error)?;
            let vm = backend.vm_create(c.config, c.pmu, c.start)?;
            let mut location = heapless::String::<24>::new();
            let _ = core::fmt::write(&mut location, format_args!("/v1/vms/{}", vm.id));
            let extra = [("Location", HeaderValue::Text(&location))];
            write_response(out, Head::json(Status::Created, 0, ka), &extra, max, |w| {
                w.json(&VmJson(&vm))
            })
        }
        Command::GetVm(id) => vm_reply(out, ka, max, backend.vm(id)),
        Command::DeleteVm(id) => {
            backend.vm_delete(id)?;
            let head = Head {
                status: Status::NoContent,
                content_type: None,
                content_length: None,
                keep_alive: ka,
                allow: Methods::EMPTY,
                extra: &[],
            };
            write_head(out, &head);
            Ok(Status::NoContent)
        }
        Command::VmAction(id, action) => vm_reply(out, ka, max, backend.vm_action(id, action)),
        Command::VmConsole(id) => {
            let offset = console_query(req.query)?.offset;
            write_console(out, ka, max, &*backend, id, offset)
        }
        Command::VmConsoleInput(id) => {
            let queued = backend.vm_console_input(id, req.body)?;
            write_json(out, ok, ka, max, &queued)
        }
        Command::VmStats(id) => {
            let vm = backend.vm(id)?;
            write_json(out, ok, ka, max, &StatsJson(&vm.summary.stats))
        }
        Command::GetVmPmu(id) => {
            let pmu = backend.vm_pmu(id)?;
            write_json(out, ok, ka, max, &crate::json::PmuInfoJson(&pmu))
        }
        Command::SetVmPmu(id) => {
            let pmu = crate::body::parse_pmu(req.body)?;
            vm_reply(out, ka, max, backend.vm_set_pmu(id, pmu))
        }
        Command::UploadVmImage(id) => vm_reply(out, ka, max, backend.vm_image(id, req.body)),
        Command::UploadVmInitrd(id) => vm_reply(out, ka, max, backend.vm_initrd(id, req.body)),
    }
}

/// A create body whose `image` is no valid name (`""`, `"../x"`) gets the answer of one that
/// names no built-in image (`"nope"`): 400 `unknown_image` either way, as the spec's enum says.
fn image_error(e: crate::body::BodyError) -> ApiError {
    match e {
        crate::body::BodyError::UnknownImage => ApiError::Vm(VmError::UnknownImage),
        e => ApiError::Body(e),
    }
}

/// Whether a `Content-Type` value names `want` (`type/subtype`, any case, parameters such as
/// `; charset=utf-8` allowed).
fn media_type_is(content_type: Option<&str>, want: &str) -> bool {
    content_type.is_some_and(|ct| {
        let essence = ct.split(';').next().unwrap_or("").trim_matches([' ', '\t']);
        essence.eq_ignore_ascii_case(want)
    })
}

/// The console read's query.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ConsoleQuery {
    offset: u64,
    wait_ms: u32,
}

/// The console's query: `offset=N` (a decimal `u64`, default 0) and `wait_ms=T` (a decimal
/// from 0 to [`CONSOLE_WAIT_MAX_MS`], default 0: no wait), in either order, each at most once;
/// anything else is 400 `invalid_query`.
fn console_query(query: Option<&str>) -> Result<ConsoleQuery, ApiError> {
    let mut q = ConsoleQuery {
        offset: 0,
        wait_ms: 0,
    };
    let (mut offset_seen, mut wait_seen) = (false, false);
    let text = query.unwrap_or("");
    if text.is_empty() {
        return Ok(q);
    }
    for pair in text.split('&') {
        let (key, value) = pair.split_once('=').ok_or(ApiError::InvalidQuery)?;
        let seen = match key {
            "offset" => &mut offset_seen,
            "wait_ms" => &mut wait_seen,
            _ => return Err(ApiError::InvalidQuery),
        };
        if core::mem::replace(seen, true) {
            return Err(ApiError::InvalidQuery);
        }
        let n = decimal(value).ok_or(ApiError::InvalidQuery)?;
        match key {
            "offset" => q.offset = n,
            _ => {
                q.wait_ms = u32::try_from(n)
                    .ok()
                    .filter(|&ms| ms <= CONSOLE_WAIT_MAX_MS)
                    .ok_or(ApiError::InvalidQuery)?
            }
        }
    }
    Ok(q)
}

/// A decimal `u64`: 1 to 20 digits, no sign, no overflow.
fn decimal(v: &str) -> Option<u64> {
    if v.is_empty() || v.len() > 20 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

fn cpu_reply(
    out: &mut Vec<u8>,
    keep_alive: bool,
    max: usize,
    reply: Result<CpuInfo<'_>, CpuError>,
) -> Result<Status, ApiError> {
    write_json(out, Status::Ok, keep_alive, max, &reply?)
}

fn vm_reply(
    out: &mut Vec<u8>,
    keep_alive: bool,
    max: usize,
    reply: Result<VmInfo, VmError>,
) -> Result<Status, ApiError> {
    write_json(out, Status::Ok, keep_alive, max, &VmJson(&reply?))
}

/// One element of a JSON array, written into the response body.
type Element<'e> = &'e mut dyn FnMut(&mut BodyWriter<'_>) -> Result<(), ApiError>;

/// A JSON array streamed from a backend's `each` callback: `list` calls its argument once per
/// element with a writer of that element; nothing is collected first.
fn write_array(
    out: &mut Vec<u8>,
    keep_alive: bool,
    max: usize,
    list: impl FnOnce(&mut dyn FnMut(Element<'_>)),
) -> Result<Status, ApiError> {
    let head = Head::json(Status::Ok, 0, keep_alive);
    write_response(out, head, &[], max, |w| {
        w.raw(b"[")?;
        let mut result = Ok(());
        let mut first = true;
        list(&mut |element| {
            if result.is_ok() {
                result = if first { Ok(()) } else { w.raw(b",") }.and_then(|()| element(w));
                first = false;
            }
        });
        result?;
        w.raw(b"]")
    })
}

/// `GET /v1/cpus`: the CPUs from [`Backend::cpus`].
fn write_cpus<B: Backend + ?Sized>(
    out: &mut Vec<u8>,
    keep_alive: bool,
    max: usize,
    backend: &B,
) -> Result<Status, ApiError> {
    write_array(out, keep_alive, max, |emit| {
        backend.cpus(&mut |cpu| emit(&mut |w| w.json(cpu)))
    })
}

/// `GET /v1/vms`: the VMs from [`Backend::vms`].
fn write_vms<B: Backend + ?Sized>(
    out: &mut Vec<u8>,
    keep_alive: bool,
    max: usize,
    backend: &B,
) -> Result<Status, ApiError> {
    write_array(out, keep_alive, max, |emit| {
        backend.vms(&mut |vm| emit(&mut |w| w.json(&VmJson(vm))))
    })
}

/// Console bytes, raw, with `X-Console-Next-Offset` (pass it as `offset` next time) and
/// `X-Console-Dropped` (bytes between the requested offset and the first byte sent that the
/// ring no longer holds; 0 when nothing was lost).
fn write_console<B: Backend + ?Sized>(
    out: &mut Vec<u8>,
    keep_alive: bool,
    max: usize,
    backend: &B,
    id: u32,
    offset: u64,
) -> Result<Status, ApiError> {
    // Leave room for the head (well under 256 bytes).
    let room = max.saturating_sub(256).min(hv::devices::CONSOLE_RING_SIZE);
    let start = out.len();
    out.resize(start + room, 0);
    let read = backend.vm_console(id, offset, &mut out[start..]);
    let read = match read {
        Ok(r) => r,
        Err(e) => {
            out.truncate(start);
            return Err(e.into());
        }
    };
    out.truncate(start + read.copied.min(room));
    let body_len = out.len() - start;
    let extra = [
        ("X-Console-Next-Offset", HeaderValue::Num(read.next_offset)),
        ("X-Console-Dropped", HeaderValue::Num(read.dropped)),
    ];
    let head = Head {
        status: Status::Ok,
        content_type: Some("application/octet-stream"),
        content_length: Some(body_len),
        keep_alive,
        allow: Methods::EMPTY,
        extra: &extra,
    };
    write_head(out, &head);
    let head_len = out.len() - start - body_len;
    out[start..].rotate_right(head_len);
    Ok(Status::Ok)
}

fn write_metrics<B: Backend + ?Sized>(
    out: &mut Vec<u8>,
    keep_alive: bool,
    max: usize,
    backend: &B,
    stats: &HttpStats,
) -> Result<Status, ApiError> {
    let head = Head {
        content_type: Some(crate::metrics::CONTENT_TYPE),
        ..Head::json(Status::Ok, 0, keep_alive)
    };
    let mut text = Vec::new();
    crate::metrics::render(backend, stats, &mut text);
    write_response(out, head, &[], max, |w| w.raw(&text))
}

/// Appends a complete response whose body is `body` as JSON, or returns
/// [`ApiError::ResponseTooLarge`] (and appends nothing) if it would exceed `max` bytes.
pub fn write_json<T: Serialize + ?Sized>(
    out: &mut Vec<u8>,
    status: Status,
    keep_alive: bool,
    max: usize,
    body: &T,
) -> Result<Status, ApiError> {
    write_response(out, Head::json(status, 0, keep_alive), &[], max, |w| {
        w.json(body)
    })
}

/// Appends a complete error response: the error's status, `Allow` for 405,
/// `WWW-Authenticate: Bearer` for 401, `Retry-After` for 503 and 409 `console_busy`, and the JSON error body. `keep_alive` is overridden to
/// false for errors that close the connection. Error responses are small (paths are cut to
/// [`crate::error::ECHO_MAX`]) and bounded by [`ERROR_MAX`] rather than by
/// [`Limits::max_response_bytes`], so that an error can always be reported. Returns the status
/// written.
pub fn write_error(
    out: &mut Vec<u8>,
    error: ApiError,
    context: Option<Context<'_>>,
    keep_alive: bool,
) -> Status {
    let keep_alive = keep_alive && !error.closes_connection();
    let body = ErrorBody { error, context };
    let head = Head {
        allow: error.allow(),
        ..Head::json(error.status(), 0, keep_alive)
    };
    let retry = [(
        "Retry-After",
        HeaderValue::Num(Settings::RETRY_AFTER_SECONDS),
    )];
    let extra: &[(&str, HeaderValue<'_>)] = match (error.status(), error) {
        (Status::Unauthorized, _) => &[("WWW-Authenticate", HeaderValue::Text("Bearer"))],
        (Status::ServiceUnavailable, _) | (_, ApiError::Vm(VmError::InputFull { .. })) => &retry,
        _ => &[],
    };
    let written = write_response(out, head, extra, ERROR_MAX, |w| w.json(&body));
    match written {
        Ok(s) => s,
        Err(_) => {
            // Unreachable with the messages we have; keep the client informed regardless.
            let fallback = ErrorBody {
                error: ApiError::ResponseTooLarge,
                context: None,
            };
            let head = Head::json(Status::InternalServerError, 0, keep_alive);
            let _ = write_response(out, head, &[], ERROR_MAX, |w| w.json(&fallback));
            Status::InternalServerError
        }
    }
}

/// The most bytes an error response takes.
pub const ERROR_MAX: usize = 2048;

/// Writes the body with `body`, then `head` (its `content_length` set to the body's) in front
/// of it.
fn write_response(
    out: &mut Vec<u8>,
    head: Head<'_>,
    extra: &[(&str, HeaderValue<'_>)],
    max: usize,
    body: impl FnOnce(&mut BodyWriter<'_>) -> Result<(), ApiError>,
) -> Result<Status, ApiError> {
    let start = out.len();
    let end = start.saturating_add(max);
    let mut w = BodyWriter { out, end };
    let json = head.content_type == Some(JSON);
    let written = body(&mut w).and_then(|()| if json { w.raw(b"\n") } else { Ok(()) });
    let out = w.out;
    if written.is_err() {
        out.truncate(start);
        return Err(ApiError::ResponseTooLarge);
    }
    let body_len = out.len() - start;
    let head = Head {
        content_length: Some(body_len),
        extra,
        ..head
    };
    write_head(out, &head);
    if out.len() > end {
        out.truncate(start);
        return Err(ApiError::ResponseTooLarge);
    }
    let head_len = out.len() - start - body_len;
    out[start..].rotate_right(head_len);
    Ok(head.status)
}

/// Appends to a response body without passing an absolute end.
struct BodyWriter<'a> {
    out: &'a mut Vec<u8>,
    end: usize,
}

impl BodyWriter<'_> {
    fn raw(&mut self, bytes: &[u8]) -> Result<(), ApiError> {
        if self.out.len() + bytes.len() > self.end {
            return Err(ApiError::ResponseTooLarge);
        }
        self.out.extend_from_slice(bytes);
        Ok(())
    }

    /// Serializes `value` into the tail of `out`, giving the serializer a window that doubles
    /// from 256 bytes up to what is left of the limit.
    fn json<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), ApiError> {
        let start = self.out.len();
        let avail = self.end.saturating_sub(start);
        let mut room = avail.min(256);
        loop {
            self.out.resize(start + room, 0);
            match serde_json_core::to_slice(value, &mut self.out[start..]) {
                Ok(n) => {
                    self.out.truncate(start + n);
                    return Ok(());
                }
                Err(_) if room < avail => room = room.saturating_mul(2).min(avail),
                Err(_) => {
                    self.out.truncate(start);
                    return Err(ApiError::ResponseTooLarge);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::BodyKind;

    #[test]
    fn media_types() {
        assert!(media_type_is(Some("application/json"), JSON));
        assert!(media_type_is(Some("Application/JSON; charset=utf-8"), JSON));
        assert!(media_type_is(Some(" application/json ;x=y"), JSON));
        assert!(!media_type_is(Some("application/jsonx"), JSON));
        assert!(!media_type_is(Some("text/plain"), JSON));
        assert!(!media_type_is(None, JSON));
        assert_eq!(
            BodyKind::Upload.media_type(),
            Some("application/octet-stream")
        );
    }

    fn console_offset(query: Option<&str>) -> Result<u64, ApiError> {
        console_query(query).map(|q| q.offset)
    }

    #[test]
    fn console_waits() {
        let q = |s: &str| console_query(Some(s)).map(|q| (q.offset, q.wait_ms));
        assert_eq!(console_query(None).map(|q| q.wait_ms), Ok(0));
        assert_eq!(q("wait_ms=0"), Ok((0, 0)));
        assert_eq!(q("offset=7&wait_ms=250"), Ok((7, 250)));
        assert_eq!(q("wait_ms=250&offset=7"), Ok((7, 250)));
        assert_eq!(q("wait_ms=30000"), Ok((0, CONSOLE_WAIT_MAX_MS)));
        for bad in [
            "wait_ms=30001",
            "wait_ms=4294967296",
            "wait_ms=-1",
            "wait_ms=",
            "wait_ms",
            "wait_ms=1&wait_ms=1",
            "offset=1&offset=1",
            "offset=1&",
            "&offset=1",
            "offset=1&&wait_ms=1",
            "wait_ms=1.5",
            "Wait_ms=1",
            "wait_ms=1&x=2",
        ] {
            assert_eq!(q(bad), Err(ApiError::InvalidQuery), "{bad}");
        }
    }

    #[test]
    fn console_offsets() {
        assert_eq!(console_offset(None), Ok(0));
        assert_eq!(console_offset(Some("")), Ok(0));
        assert_eq!(console_offset(Some("offset=0")), Ok(0));
        assert_eq!(
            console_offset(Some("offset=18446744073709551615")),
            Ok(u64::MAX)
        );
        for bad in [
            "offset=18446744073709551616",
            "offset=",
            "offset=-1",
            "offset=+1",
            "offset=1&x=2",
            "x=1",
            "offset",
            "offset=0x10",
            "offset=99999999999999999999999",
        ] {
            assert_eq!(
                console_offset(Some(bad)),
                Err(ApiError::InvalidQuery),
                "{bad}"
            );
        }
    }

    #[test]
    fn settings_from_boot_config() {
        assert_eq!(
            Settings::from_boot_config(&BootConfig::default()),
            Settings::default()
        );
        let c = BootConfig::parse([
            "api_token=t0k",
            "http_max_headers=8",
            "http_max_head_bytes=1024",
            "http_max_body_bytes=100",
            "http_max_upload_bytes=2000",
            "http_max_conns=3",
            "http_idle_ms=1500",
        ])
        .unwrap();
        let s = Settings::from_boot_config(&c);
        assert_eq!(s.token.as_ref().map(ApiToken::as_str), Some("t0k"));
        assert_eq!(
            s.limits,
            Limits {
                max_headers: 8,
                max_head_bytes: 1024,
                max_body_bytes: 100,
                max_upload_bytes: 2000,
                max_response_bytes: Limits::DEFAULT.max_response_bytes,
            }
        );
        assert_eq!((s.max_connections, s.idle_timeout_ms), (3, 1500));
    }
}
