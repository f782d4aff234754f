//! Route -> backend -> JSON -> response bytes.
//!
//! [`serve`] is the loop a transport calls; [`handle`] answers one request; [`write_json`] and
//! [`write_error`] are the two ways a response is written, for callers that compose their own
//! flow (for example a kernel that runs a command on another CPU and answers later).
//!
//! Responses are appended to a caller's `Vec<u8>`. Each is bounded by
//! [`Limits::max_response_bytes`]: a reply that would not fit is replaced by a small
//! `500 response_too_large` error. The JSON is written straight into the vector's tail (no
//! scratch buffer), and the head is written once the body's length is known and rotated in
//! front of it.

use alloc::vec::Vec;

use serde::Serialize;

use crate::api::{Backend, CpuError, CpuInfo};
use crate::error::{ApiError, Context, ErrorBody};
use crate::http::{Conn, Limits, Methods, Next, Request, Status, write_head};
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
}

/// Answers every complete request buffered in `conn`, in order, appending the responses to
/// `out`.
///
/// Stops early, with [`Flow::Continue`], once `out` holds [`Limits::max_response_bytes`] or more,
/// so that pipelined requests cannot make the output grow without bound.
pub fn serve<B: Backend + ?Sized>(conn: &mut Conn, backend: &mut B, out: &mut Vec<u8>) -> Flow {
    let limits = *conn.limits();
    while out.len() < limits.max_response_bytes {
        match conn.next_request() {
            Next::Request(req) => handle(backend, &req, &limits, out),
            Next::Error(e) => {
                write_error(out, ApiError::Parse(e), None, false);
                return Flow::Close;
            }
            Next::NeedMore => return Flow::Continue,
            Next::Closed => return Flow::Close,
        }
    }
    if conn.is_closed() {
        Flow::Close
    } else {
        Flow::Continue
    }
}

/// Answers one request: route it, run the command on `backend`, append the response to `out`.
pub fn handle<B: Backend + ?Sized>(
    backend: &mut B,
    req: &Request<'_>,
    limits: &Limits,
    out: &mut Vec<u8>,
) {
    let ctx = Context {
        method: req.method,
        path: req.path,
    };
    let keep_alive = req.keep_alive;
    let max = limits.max_response_bytes;
    let result = match router::route(req.method, req.path) {
        Err(e) => Err(e),
        Ok(Command::Health) => write_json(out, Status::Ok, keep_alive, max, &backend.health()),
        Ok(Command::ListCpus) => write_cpus(out, keep_alive, max, &*backend),
        Ok(Command::GetCpu(id)) => cpu_reply(out, keep_alive, max, backend.cpu(id)),
        Ok(Command::CpuOnline(id)) => cpu_reply(out, keep_alive, max, backend.cpu_online(id)),
        Ok(Command::CpuOffline(id)) => cpu_reply(out, keep_alive, max, backend.cpu_offline(id)),
        Ok(Command::Reboot) => backend.reboot().map_err(ApiError::from).and_then(|()| {
            let body = crate::api::Rebooting {
                status: "rebooting",
            };
            write_json(out, Status::Accepted, keep_alive, max, &body)
        }),
    };
    if let Err(e) = result {
        write_error(out, e, Some(ctx), keep_alive);
    }
}

fn cpu_reply(
    out: &mut Vec<u8>,
    keep_alive: bool,
    max: usize,
    reply: Result<CpuInfo<'_>, CpuError>,
) -> Result<(), ApiError> {
    write_json(out, Status::Ok, keep_alive, max, &reply?)
}

/// A JSON array of CPU objects, streamed from [`Backend::cpus`].
fn write_cpus<B: Backend + ?Sized>(
    out: &mut Vec<u8>,
    keep_alive: bool,
    max: usize,
    backend: &B,
) -> Result<(), ApiError> {
    write_response(out, Status::Ok, keep_alive, Methods::EMPTY, max, |w| {
        w.raw(b"[")?;
        let mut result = Ok(());
        let mut first = true;
        backend.cpus(&mut |cpu| {
            if result.is_ok() {
                result = if first { Ok(()) } else { w.raw(b",") }.and_then(|()| w.json(cpu));
                first = false;
            }
        });
        result?;
        w.raw(b"]")
    })
}

/// Appends a complete response whose body is `body` as JSON, or returns
/// [`ApiError::ResponseTooLarge`] (and appends nothing) if it would exceed `max` bytes.
pub fn write_json<T: Serialize + ?Sized>(
    out: &mut Vec<u8>,
    status: Status,
    keep_alive: bool,
    max: usize,
    body: &T,
) -> Result<(), ApiError> {
    write_response(out, status, keep_alive, Methods::EMPTY, max, |w| {
        w.json(body)
    })
}

/// Appends a complete error response: the error's status, `Allow` for 405, and the JSON error
/// body. `keep_alive` is overridden to false for framing errors. Error responses are small
/// (paths are cut to [`crate::error::ECHO_MAX`]) and bounded by [`ERROR_MAX`] rather than by
/// [`Limits::max_response_bytes`], so that an error can always be reported.
pub fn write_error(
    out: &mut Vec<u8>,
    error: ApiError,
    context: Option<Context<'_>>,
    keep_alive: bool,
) {
    let keep_alive = keep_alive && !error.closes_connection();
    let body = ErrorBody { error, context };
    let written = write_response(
        out,
        error.status(),
        keep_alive,
        error.allow(),
        ERROR_MAX,
        |w| w.json(&body),
    );
    if written.is_err() {
        // Unreachable with the messages we have; keep the client informed regardless.
        let fallback = ErrorBody {
            error: ApiError::ResponseTooLarge,
            context: None,
        };
        let _ = write_response(
            out,
            Status::InternalServerError,
            keep_alive,
            Methods::EMPTY,
            ERROR_MAX,
            |w| w.json(&fallback),
        );
    }
}

/// The most bytes an error response takes.
pub const ERROR_MAX: usize = 2048;

/// Writes the body with `body`, then the head in front of it.
fn write_response(
    out: &mut Vec<u8>,
    status: Status,
    keep_alive: bool,
    allow: Methods,
    max: usize,
    body: impl FnOnce(&mut BodyWriter<'_>) -> Result<(), ApiError>,
) -> Result<(), ApiError> {
    let start = out.len();
    let end = start.saturating_add(max);
    let mut w = BodyWriter { out, end };
    let written = body(&mut w).and_then(|()| w.raw(b"\n"));
    let out = w.out;
    if written.is_err() {
        out.truncate(start);
        return Err(ApiError::ResponseTooLarge);
    }
    let body_len = out.len() - start;
    write_head(out, status, body_len, keep_alive, allow);
    if out.len() > end {
        out.truncate(start);
        return Err(ApiError::ResponseTooLarge);
    }
    let head_len = out.len() - start - body_len;
    out[start..].rotate_right(head_len);
    Ok(())
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
