//! HTTP/1.1 server side of one connection, over bytes.
//!
//! This layer exists so that everything the endpoint decides about the wire format (where a
//! request ends, whether the connection stays open, which limit was hit) is a plain state
//! machine that the host tests can drive byte by byte. It owns no socket: the transport feeds it
//! what it received ([`Conn::feed`]) and asks for the next complete request
//! ([`Conn::next_request`]). The request head is parsed by `httparse`, a well-kept parser; this
//! module only adds framing (`Content-Length`), limits and connection persistence.
//!
//! What is supported, on purpose, and what is not:
//!
//! * Request bodies are framed by `Content-Length` only. A request that carries
//!   `Transfer-Encoding: chunked` is answered `411 Length Required` (code `length_required`):
//!   our bodies are small JSON documents every client can length-prefix, and 411 tells the client
//!   exactly what to do instead. Any other transfer coding is `501 Not Implemented`, as RFC 9112
//!   §6.1 asks for codings a server does not understand. Both close the connection, because
//!   without the framing the next request cannot be found.
//! * Persistence follows RFC 9112 §9.3: HTTP/1.1 stays open unless a `Connection` header carries
//!   `close`; HTTP/1.0 closes unless it carries `keep-alive`.
//! * Pipelining: several requests may be buffered; they are yielded in order and the caller
//!   answers them in order.
//! * Every malformed or over-limit request yields one [`ParseError`], to be answered with its
//!   status (400, 411, 413, 431, 501, 505), after which the connection is closed: once framing
//!   is in doubt nothing after it can be trusted.
//! * `Expect: 100-continue` is answered with `100 Continue` once the head passed every check
//!   (limits, the token, and for an upload whether the VM can take one), and with the final
//!   error status instead when it did not (RFC 9110 §10.1.1).
//! * Not supported (yet): `HEAD`, absolute-form targets, percent-decoding.
//!
//! * Bodies have two limits: [`Limits::max_body_bytes`] for every route but the image upload
//!   (JSON documents, 64 KiB), and [`Limits::max_upload_bytes`] (16 MiB) for the routes whose
//!   [`crate::router::BodyKind`] is `Upload`. Console input (`Input`) is further held to the
//!   guest's input queue, [`crate::api::CONSOLE_INPUT_MAX`]. Which one applies is decided from the request
//!   head, before any of the body is buffered: an oversized `Content-Length` is answered 413 at
//!   once. An upload head that passed these checks is offered once to the caller
//!   ([`Conn::take_upload_check`]), which refuses it at once when the VM cannot take an image
//!   now ([`crate::Backend::vm_upload_allowed`]): again before the body is buffered.
//!
//! Memory: a [`Conn`] allocates its input buffer when its first bytes arrive,
//! `max_head_bytes + max_body_bytes` long, and gives it back on [`Conn::reset`].
//! It grows past that only while the request at the front is an upload whose head has been
//! parsed and accepted, to exactly that request's size, and shrinks back once it is answered:
//! an idle connection never holds an upload-sized buffer, and neither does one that only sends
//! heads. With a bearer token configured ([`Conn::with_token`]) it grows only for a request
//! that carries the token: an upload without it is answered 401 from its head alone (and the
//! connection closed), so unauthenticated clients cannot make the endpoint hold upload-sized
//! buffers. Parsing allocates nothing.

use alloc::vec::Vec;
use core::fmt;

use hv::config::ApiToken;

/// How many header slots the parser is given at most; [`Limits::max_headers`] is clamped to it.
///
/// The slots live on the stack while a request head is parsed (`httparse` needs them up front).
pub const HEADER_SLOTS: usize = 64;

/// Bounds on what one connection accepts and produces.
///
/// The defaults fit a control API whose requests are a request line, a handful of headers and at
/// most a small JSON document.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Most header fields in one request (default 32, at most [`HEADER_SLOTS`]). More: 431.
    pub max_headers: usize,
    /// Most bytes in a request head, request line and headers and the blank line included
    /// (default 8 KiB). More: 431.
    pub max_head_bytes: usize,
    /// Most bytes in a request body, as announced by `Content-Length` (default 64 KiB). More: 413.
    /// Applies to every route but uploads.
    pub max_body_bytes: usize,
    /// Most bytes in an upload body (`PUT /v1/vms/{id}/image`; default 16 MiB: a Linux bzImage
    /// of ~8 MiB and an initramfs fit). More: 413.
    pub max_upload_bytes: usize,
    /// Most bytes in one response, head included (default 256 KiB). A reply that would not fit
    /// is replaced by a `500 response_too_large` error. [`crate::serve`] also stops answering
    /// pipelined requests once this many bytes are waiting in its output, until they are sent.
    pub max_response_bytes: usize,
}

impl Limits {
    /// The documented defaults: 32 headers, 8 KiB head, 64 KiB body, 16 MiB upload, 256 KiB
    /// response.
    pub const DEFAULT: Limits = Limits {
        max_headers: 32,
        max_head_bytes: 8 * 1024,
        max_body_bytes: 64 * 1024,
        max_upload_bytes: 16 * 1024 * 1024,
        max_response_bytes: 256 * 1024,
    };

    fn header_slots(&self) -> usize {
        self.max_headers.clamp(1, HEADER_SLOTS)
    }

    fn buffer_capacity(&self) -> usize {
        self.max_head_bytes.saturating_add(self.max_body_bytes)
    }

    /// The body limit for a request to `method path`.
    pub fn body_limit(&self, method: Method, path: &str) -> usize {
        match crate::router::body_kind(method, path) {
            crate::router::BodyKind::Upload => self.max_upload_bytes,
            crate::router::BodyKind::Input => {
                crate::api::CONSOLE_INPUT_MAX.min(self.max_body_bytes)
            }
            _ => self.max_body_bytes,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// A request method. Methods the parser accepts but that are none of these are [`Method::Other`]
/// (the router answers them `501 not_implemented`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    /// `GET`
    Get,
    /// `HEAD`
    Head,
    /// `POST`
    Post,
    /// `PUT`
    Put,
    /// `DELETE`
    Delete,
    /// `PATCH`
    Patch,
    /// `OPTIONS`
    Options,
    /// Any other token (methods are case-sensitive: `get` is one of these).
    Other,
}

impl Method {
    const ALL: [Method; 7] = [
        Method::Get,
        Method::Head,
        Method::Post,
        Method::Put,
        Method::Delete,
        Method::Patch,
        Method::Options,
    ];

    /// Parses a method token as sent on the wire.
    pub fn from_token(token: &str) -> Method {
        Method::ALL
            .into_iter()
            .find(|m| m.as_str() == token)
            .unwrap_or(Method::Other)
    }

    /// The token as sent on the wire (`"OTHER"` for [`Method::Other`]).
    pub const fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Patch => "PATCH",
            Method::Options => "OPTIONS",
            Method::Other => "OTHER",
        }
    }

    const fn bit(self) -> u8 {
        1 << self as u8
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of methods, as sent in an `Allow` header (`Display` gives `GET, POST`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Methods(u8);

impl Methods {
    /// The empty set.
    pub const EMPTY: Methods = Methods(0);

    /// This set with `m` added.
    #[must_use]
    pub const fn with(self, m: Method) -> Methods {
        Methods(self.0 | m.bit())
    }

    /// Whether `m` is in the set.
    pub const fn contains(self, m: Method) -> bool {
        self.0 & m.bit() != 0
    }

    /// Whether the set is empty.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The members, in a fixed order.
    pub fn iter(self) -> impl Iterator<Item = Method> {
        Method::ALL.into_iter().filter(move |m| self.contains(*m))
    }
}

impl fmt::Display for Methods {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, m) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(m.as_str())?;
        }
        Ok(())
    }
}

/// A response status this endpoint sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Status {
    /// 200
    Ok,
    /// 201
    Created,
    /// 202
    Accepted,
    /// 204
    NoContent,
    /// 400
    BadRequest,
    /// 401
    Unauthorized,
    /// 404
    NotFound,
    /// 405
    MethodNotAllowed,
    /// 408
    RequestTimeout,
    /// 409
    Conflict,
    /// 411
    LengthRequired,
    /// 413
    ContentTooLarge,
    /// 415
    UnsupportedMediaType,
    /// 431
    HeaderFieldsTooLarge,
    /// 500
    InternalServerError,
    /// 501
    NotImplemented,
    /// 503
    ServiceUnavailable,
    /// 505
    HttpVersionNotSupported,
    /// 507
    InsufficientStorage,
}

impl Status {
    /// Every status, in code order (for counters indexed by [`Status::index`]).
    pub const ALL: [Status; 19] = [
        Status::Ok,
        Status::Created,
        Status::Accepted,
        Status::NoContent,
        Status::BadRequest,
        Status::Unauthorized,
        Status::NotFound,
        Status::MethodNotAllowed,
        Status::RequestTimeout,
        Status::Conflict,
        Status::LengthRequired,
        Status::ContentTooLarge,
        Status::UnsupportedMediaType,
        Status::HeaderFieldsTooLarge,
        Status::InternalServerError,
        Status::NotImplemented,
        Status::ServiceUnavailable,
        Status::HttpVersionNotSupported,
        Status::InsufficientStorage,
    ];

    /// Position in [`Status::ALL`].
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The numeric code.
    pub const fn code(self) -> u16 {
        match self {
            Status::Ok => 200,
            Status::Created => 201,
            Status::Accepted => 202,
            Status::NoContent => 204,
            Status::BadRequest => 400,
            Status::Unauthorized => 401,
            Status::NotFound => 404,
            Status::MethodNotAllowed => 405,
            Status::RequestTimeout => 408,
            Status::Conflict => 409,
            Status::LengthRequired => 411,
            Status::ContentTooLarge => 413,
            Status::UnsupportedMediaType => 415,
            Status::HeaderFieldsTooLarge => 431,
            Status::InternalServerError => 500,
            Status::NotImplemented => 501,
            Status::ServiceUnavailable => 503,
            Status::HttpVersionNotSupported => 505,
            Status::InsufficientStorage => 507,
        }
    }

    /// The reason phrase of the status line (RFC 9110 §15).
    pub const fn reason(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::Created => "Created",
            Status::Accepted => "Accepted",
            Status::NoContent => "No Content",
            Status::BadRequest => "Bad Request",
            Status::Unauthorized => "Unauthorized",
            Status::NotFound => "Not Found",
            Status::MethodNotAllowed => "Method Not Allowed",
            Status::RequestTimeout => "Request Timeout",
            Status::Conflict => "Conflict",
            Status::LengthRequired => "Length Required",
            Status::ContentTooLarge => "Content Too Large",
            Status::UnsupportedMediaType => "Unsupported Media Type",
            Status::HeaderFieldsTooLarge => "Request Header Fields Too Large",
            Status::InternalServerError => "Internal Server Error",
            Status::NotImplemented => "Not Implemented",
            Status::ServiceUnavailable => "Service Unavailable",
            Status::HttpVersionNotSupported => "HTTP Version Not Supported",
            Status::InsufficientStorage => "Insufficient Storage",
        }
    }
}

/// Why a request could not be framed. Each is answered with [`ParseError::status`] and then the
/// connection is closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ParseError {
    /// The request line or a header is not valid HTTP/1.x syntax (400).
    Malformed,
    /// The request target is not in origin form (does not start with `/`) (400).
    BadTarget,
    /// A header this layer needs (`Content-Length`, `Authorization`, `Content-Type`,
    /// `Connection`) has a value it cannot use: not a number, not UTF-8, conflicting copies (400).
    BadHeader(HeaderName),
    /// More than [`Limits::max_headers`] header fields (431).
    TooManyHeaders,
    /// The head is longer than [`Limits::max_head_bytes`] (431).
    HeadTooLarge,
    /// `Content-Length` is over [`Limits::max_body_bytes`] (413).
    BodyTooLarge,
    /// `Transfer-Encoding: chunked`: send `Content-Length` instead (411).
    ChunkedBody,
    /// A transfer coding other than chunked (501).
    UnsupportedTransferCoding,
    /// A well-formed version that is not HTTP/1.0 or HTTP/1.1, such as `HTTP/2.0` (505).
    UnsupportedVersion,
    /// A body larger than the default buffer (an upload) without the bearer token: refused
    /// from the head, before the body is buffered (401).
    Unauthorized,
}

/// The headers [`ParseError::BadHeader`] can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HeaderName {
    /// `Content-Length`
    ContentLength,
    /// `Authorization`
    Authorization,
    /// `Content-Type`
    ContentType,
    /// `Connection`
    Connection,
}

impl HeaderName {
    /// The header name in its usual spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            HeaderName::ContentLength => "Content-Length",
            HeaderName::Authorization => "Authorization",
            HeaderName::ContentType => "Content-Type",
            HeaderName::Connection => "Connection",
        }
    }
}

impl ParseError {
    /// The status this error is answered with.
    pub const fn status(self) -> Status {
        match self {
            ParseError::Malformed | ParseError::BadTarget | ParseError::BadHeader(_) => {
                Status::BadRequest
            }
            ParseError::TooManyHeaders | ParseError::HeadTooLarge => Status::HeaderFieldsTooLarge,
            ParseError::BodyTooLarge => Status::ContentTooLarge,
            ParseError::ChunkedBody => Status::LengthRequired,
            ParseError::UnsupportedTransferCoding => Status::NotImplemented,
            ParseError::UnsupportedVersion => Status::HttpVersionNotSupported,
            ParseError::Unauthorized => Status::Unauthorized,
        }
    }
}

/// One complete request, borrowed from the connection's buffer.
///
/// Only what the endpoint uses is kept; other headers are checked for syntax and dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request<'a> {
    /// The method.
    pub method: Method,
    /// The path of the target, without the query: always starts with `/`, not percent-decoded.
    pub path: &'a str,
    /// What follows the first `?` of the target, if there is one (not decoded).
    pub query: Option<&'a str>,
    /// The minor HTTP version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    /// The `Authorization` header, if sent.
    pub authorization: Option<&'a str>,
    /// The `Content-Type` header, if sent.
    pub content_type: Option<&'a str>,
    /// The body (`Content-Length` bytes; empty without that header).
    pub body: &'a [u8],
    /// Whether the connection stays open after the response. When false, the response must
    /// carry `Connection: close` and the transport closes after sending it; the [`Conn`] has
    /// already stopped reading.
    pub keep_alive: bool,
}

/// What [`Conn::next_request`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next<'a> {
    /// A complete request: answer it (in order), then ask again.
    Request(Request<'a>),
    /// Bytes that cannot be a valid request: answer with the error's status and
    /// `Connection: close`, then close. The connection is now [`Next::Closed`].
    Error(ParseError),
    /// No complete request buffered: feed more bytes.
    NeedMore,
    /// The connection is done (after `Connection: close` or an error); nothing more will come.
    Closed,
}

/// The server side of one HTTP/1.1 connection, as a state machine over bytes.
///
/// ```
/// use net::http::{Conn, Limits, Next};
///
/// let mut conn = Conn::new(Limits::default());
/// let data = b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\nGET /v1/cpus HTTP/1.1\r\n";
/// assert_eq!(conn.feed(data), data.len());
/// match conn.next_request() {
///     Next::Request(req) => assert_eq!(req.path, "/v1/health"),
///     other => panic!("{other:?}"),
/// }
/// // The second request is not complete yet.
/// assert_eq!(conn.next_request(), Next::NeedMore);
/// ```
#[derive(Debug)]
pub struct Conn {
    limits: Limits,
    /// Received bytes; `buf[..consumed]` belongs to requests already yielded. Its capacity is
    /// the default (head + body limit) except while an accepted upload is being received.
    buf: Vec<u8>,
    consumed: usize,
    /// Bytes the request at the front needs in all, once its head is parsed and it is larger
    /// than the default buffer (an upload); 0 otherwise.
    want: usize,
    /// Uploads beyond the default buffer need this token.
    token: Option<ApiToken>,
    state: State,
    /// The request at the front asked for `Expect: 100-continue`, its head was accepted and its
    /// body has not all arrived; `true` until [`Conn::take_continue`] reports it.
    continue_due: bool,
    /// 100 Continue was reported for the request at the front: once per request.
    continued: bool,
    /// The request at the front is an upload (with the token, if one is configured) whose head
    /// is in and whose body is not: where its path is in `buf[consumed..]`, until
    /// [`Conn::take_upload_check`] hands it out.
    upload_due: Option<HeadSpans>,
    /// The upload at the front was handed out: once per request.
    upload_offered: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Open,
    /// A request asked to close, or an error was reported: ignore everything after.
    Closed,
}

impl Conn {
    /// A fresh connection without a token; allocates its input buffer
    /// (`max_head_bytes + max_body_bytes`) once.
    pub fn new(limits: Limits) -> Conn {
        Conn::with_token(limits, None)
    }

    /// A fresh connection that grows its buffer for an upload only when the request carries
    /// `token` (see the module docs); [`crate::Endpoint::conn`] makes these.
    pub fn with_token(limits: Limits, token: Option<ApiToken>) -> Conn {
        Conn {
            limits,
            buf: Vec::new(),
            consumed: 0,
            want: 0,
            token,
            state: State::Open,
            continue_due: false,
            continued: false,
            upload_due: None,
            upload_offered: false,
        }
    }

    /// Makes this a fresh connection again (for connection pools), giving its buffer back: an
    /// idle connection holds no memory.
    pub fn reset(&mut self) {
        self.buf = Vec::new();
        self.consumed = 0;
        self.want = 0;
        self.state = State::Open;
        self.continue_due = false;
        self.continued = false;
        self.upload_due = None;
        self.upload_offered = false;
    }

    /// The head of an upload whose body is still to come, once per request: the caller may
    /// refuse it now ([`crate::Backend::vm_upload_allowed`]) and [`Conn::close`] the
    /// connection rather than receive the body. Offered only when the head passed every check
    /// of this layer, the token included.
    pub fn take_upload_check(&mut self) -> Option<UploadHead<'_>> {
        let spans = self.upload_due.take()?;
        let input = self.buf.get(self.consumed..)?;
        let text = |(start, len): (usize, usize)| {
            core::str::from_utf8(input.get(start..start + len)?).ok()
        };
        Some(UploadHead {
            path: text(spans.path)?,
            content_type: match spans.content_type {
                Some(span) => Some(text(span)?),
                None => None,
            },
        })
    }

    /// Stops reading: the caller answered the request at the front itself (and closes the
    /// connection once that answer is sent). Bytes fed from now on are dropped.
    pub fn close(&mut self) {
        self.state = State::Closed;
        self.buf = Vec::new();
        self.consumed = 0;
        self.want = 0;
        self.continue_due = false;
        self.upload_due = None;
    }

    /// Whether to send `HTTP/1.1 100 Continue` now: the request at the front carries
    /// `Expect: 100-continue`, its head passed every check (limits, and the token for an
    /// upload) and its body is still to come (RFC 9110 §10.1.1). True once per request;
    /// [`crate::serve`] writes the interim response itself.
    pub fn take_continue(&mut self) -> bool {
        core::mem::take(&mut self.continue_due)
    }

    /// The limits this connection enforces.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Whether the connection is done: after a `Connection: close` request or an error was
    /// yielded. The transport closes once it has sent the last response.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Bytes received and not yet yielded as part of a request.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.consumed
    }

    /// Appends received bytes and returns how many were taken.
    ///
    /// Fewer than `bytes.len()` are taken only when the buffer is full of complete pipelined
    /// requests: call [`Conn::next_request`] until it wants more, then feed the rest (this is the
    /// shape of smoltcp's `TcpSocket::recv`, which leaves untaken bytes in the socket). Once the
    /// connection is closed, all bytes are taken and dropped.
    pub fn feed(&mut self, bytes: &[u8]) -> usize {
        if self.state == State::Closed {
            return bytes.len();
        }
        if self.consumed > 0 {
            self.buf.drain(..self.consumed);
            self.consumed = 0;
            // Give back what an upload took.
            self.buf.shrink_to(self.limits.buffer_capacity());
        }
        if self.buf.capacity() == 0 && !bytes.is_empty() {
            self.buf.reserve_exact(self.limits.buffer_capacity());
        }
        let size = self.limits.buffer_capacity().max(self.want);
        if self.buf.capacity() < size {
            // An accepted upload: room for exactly the request, once, rather than doubling
            // (each doubling copies what has arrived; a 16 MiB upload copied 16 MiB more).
            self.buf.reserve_exact(size - self.buf.len());
        }
        let room = size.saturating_sub(self.buf.len());
        let n = bytes.len().min(room);
        self.buf.extend_from_slice(&bytes[..n]);
        n
    }

    /// The next complete request, if one is buffered.
    ///
    /// The returned request borrows the buffer; its bytes are released at the next call of
    /// [`Conn::feed`] or [`Conn::next_request`].
    pub fn next_request(&mut self) -> Next<'_> {
        if self.state == State::Closed {
            return Next::Closed;
        }
        let limits = self.limits;
        let input = &self.buf[self.consumed..];
        match parse(&limits, self.token.as_ref(), input) {
            Ok(Parsed::Done(req, len)) => {
                self.consumed += len;
                self.want = 0;
                self.continue_due = false;
                self.continued = false;
                self.upload_due = None;
                self.upload_offered = false;
                if !req.keep_alive {
                    self.state = State::Closed;
                }
                Next::Request(req)
            }
            Ok(Parsed::Need(total, expect_continue, upload)) => {
                if expect_continue && !self.continued {
                    self.continue_due = true;
                    self.continued = true;
                }
                if upload.is_some() && !self.upload_offered {
                    self.upload_due = upload;
                    self.upload_offered = true;
                }
                // Beyond the default buffer only for a request whose head was accepted.
                self.want = if total > limits.buffer_capacity() {
                    total
                } else {
                    0
                };
                Next::NeedMore
            }
            Err(e) => {
                self.state = State::Closed;
                Next::Error(e)
            }
        }
    }
}

/// The head of an upload whose body has not all arrived ([`Conn::take_upload_check`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UploadHead<'a> {
    /// The path of the target (the method is `PUT`).
    pub path: &'a str,
    /// The `Content-Type` header, if sent.
    pub content_type: Option<&'a str>,
}

/// Where an upload head's path and content type are in the input: (start, length).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct HeadSpans {
    path: (usize, usize),
    content_type: Option<(usize, usize)>,
}

/// What [`parse`] found at the front of the input.
enum Parsed<'a> {
    /// A request and how many bytes it spans.
    Done(Request<'a>, usize),
    /// More bytes are needed: the request's total size when its head is complete, else 0;
    /// whether that head asked for `Expect: 100-continue`; and, for an upload whose body is to
    /// come from a client that may send it, where its path is in the input (start, length).
    Need(usize, bool, Option<HeadSpans>),
}

/// Parses one request from the front of `input`.
fn parse<'a>(
    limits: &Limits,
    token: Option<&ApiToken>,
    input: &'a [u8],
) -> Result<Parsed<'a>, ParseError> {
    let mut slots = [httparse::EMPTY_HEADER; HEADER_SLOTS];
    let mut head = httparse::Request::new(&mut slots[..limits.header_slots()]);
    // Only the first `max_head_bytes` are ever parsed as head, so that the outcome does not
    // depend on how the bytes were split into feeds.
    let window = &input[..input.len().min(limits.max_head_bytes)];
    let full = window.len() == limits.max_head_bytes;
    let head_len = match head.parse(window) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if full => return Err(ParseError::HeadTooLarge),
        Ok(httparse::Status::Partial) => return Ok(Parsed::Need(0, false, None)),
        Err(httparse::Error::TooManyHeaders) => return Err(ParseError::TooManyHeaders),
        // httparse reports any unexpected byte in the version as soon as it sees it; wait for
        // the whole request line to tell `HTTP/2.0` (505) from garbage (400).
        Err(httparse::Error::Version) => match request_line(window) {
            Some(line) if is_other_version(line) => return Err(ParseError::UnsupportedVersion),
            Some(_) => return Err(ParseError::Malformed),
            None if full => return Err(ParseError::HeadTooLarge),
            None => return Ok(Parsed::Need(0, false, None)),
        },
        Err(_) => return Err(ParseError::Malformed),
    };
    // A complete parse fills all three.
    let (Some(method), Some(target), Some(minor_version)) = (head.method, head.path, head.version)
    else {
        return Err(ParseError::Malformed);
    };
    if !target.starts_with('/') {
        return Err(ParseError::BadTarget);
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };

    let mut content_length: Option<u64> = None;
    let mut authorization = None;
    let mut content_type = None;
    let mut close = false;
    let mut keep_alive_token = false;
    let mut expect_continue = false;
    for h in head.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            let n = parse_content_length(h.value)?;
            if content_length.is_some_and(|m| m != n) {
                return Err(ParseError::BadHeader(HeaderName::ContentLength));
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // Any transfer coding makes the framing ours to decode, which we do not do. Chunked
            // gets 411 (send a length instead); anything else 501 (RFC 9112 §6.1).
            let chunked = h
                .value
                .split(|b| *b == b',')
                .any(|t| trim(t).eq_ignore_ascii_case(b"chunked"));
            return Err(if chunked {
                ParseError::ChunkedBody
            } else {
                ParseError::UnsupportedTransferCoding
            });
        } else if name.eq_ignore_ascii_case("authorization") {
            authorization = Some(single_str(
                authorization,
                h.value,
                HeaderName::Authorization,
            )?);
        } else if name.eq_ignore_ascii_case("content-type") {
            content_type = Some(single_str(content_type, h.value, HeaderName::ContentType)?);
        } else if name.eq_ignore_ascii_case("expect") {
            expect_continue |= trim(h.value).eq_ignore_ascii_case(b"100-continue");
        } else if name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|b| *b == b',').map(trim) {
                close |= token.eq_ignore_ascii_case(b"close");
                keep_alive_token |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        }
    }

    let body_len = content_length.unwrap_or(0);
    let method = Method::from_token(method);
    if body_len > limits.body_limit(method, path) as u64 {
        return Err(ParseError::BodyTooLarge);
    }
    // Fits in usize: bounded by the body limit.
    let total = head_len + body_len as usize;
    if total > limits.buffer_capacity()
        && token.is_some_and(|t| !crate::auth::authorized(t, authorization))
    {
        return Err(ParseError::Unauthorized);
    }
    if input.len() < total {
        // Invite the body only from a client that may send it.
        let may_send =
            body_len > 0 && token.is_none_or(|t| crate::auth::authorized(t, authorization));
        let span = |s: &str| (s.as_ptr() as usize - input.as_ptr() as usize, s.len());
        let upload = (may_send
            && crate::router::body_kind(method, path) == crate::router::BodyKind::Upload)
            .then(|| HeadSpans {
                path: span(path),
                content_type: content_type.map(span),
            });
        return Ok(Parsed::Need(total, expect_continue && may_send, upload));
    }
    let keep_alive = match minor_version {
        0 => keep_alive_token && !close,
        _ => !close,
    };
    Ok(Parsed::Done(
        Request {
            method,
            path,
            query,
            minor_version,
            authorization,
            content_type,
            body: &input[head_len..total],
            keep_alive,
        },
        total,
    ))
}

/// `Content-Length = 1*DIGIT` (RFC 9110 §8.6). Values too large for u64 are certainly over the
/// body limit, so they saturate and end as 413.
fn parse_content_length(value: &[u8]) -> Result<u64, ParseError> {
    let value = trim(value);
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return Err(ParseError::BadHeader(HeaderName::ContentLength));
    }
    Ok(value.iter().fold(0u64, |n, d| {
        n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    }))
}

/// A header we keep as text: UTF-8, and sent at most once.
fn single_str<'a>(
    seen: Option<&'a str>,
    value: &'a [u8],
    name: HeaderName,
) -> Result<&'a str, ParseError> {
    if seen.is_some() {
        return Err(ParseError::BadHeader(name));
    }
    core::str::from_utf8(value).map_err(|_| ParseError::BadHeader(name))
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// The request line, without its line ending and leading empty lines, once it is complete.
fn request_line(input: &[u8]) -> Option<&[u8]> {
    let start = input.iter().position(|b| !matches!(b, b'\r' | b'\n'))?;
    let input = &input[start..];
    let end = input.iter().position(|b| *b == b'\n')?;
    let line = &input[..end];
    Some(line.strip_suffix(b"\r").unwrap_or(line))
}

/// Whether a request line is `method SP target SP HTTP/d.d`: a well-formed version that is not
/// one we speak (505) rather than garbage (400).
fn is_other_version(line: &[u8]) -> bool {
    let mut parts = line.split(|b| *b == b' ');
    let version = parts.nth(2);
    parts.next().is_none()
        && matches!(version, Some([b'H', b'T', b'T', b'P', b'/', major, b'.', minor])
            if major.is_ascii_digit() && minor.is_ascii_digit())
}

/// A header value: a number or text (text must be a valid field value: visible ASCII and
/// spaces, no CR or LF).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderValue<'a> {
    /// A decimal number.
    Num(u64),
    /// Text, written as is.
    Text(&'a str),
}

impl fmt::Display for HeaderValue<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderValue::Num(n) => write!(f, "{n}"),
            HeaderValue::Text(t) => f.write_str(t),
        }
    }
}

/// `Content-Type` of JSON bodies.
pub const JSON: &str = "application/json";

/// A response head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head<'a> {
    /// The status.
    pub status: Status,
    /// `Content-Type`; `None` for a response without a body (204).
    pub content_type: Option<&'a str>,
    /// `Content-Length`; `None` for 204, which must not send one (RFC 9110 §8.6).
    pub content_length: Option<usize>,
    /// `Connection: keep-alive` or `close`.
    pub keep_alive: bool,
    /// `Allow`, when not empty (405).
    pub allow: Methods,
    /// More headers, in order.
    pub extra: &'a [(&'a str, HeaderValue<'a>)],
}

impl<'a> Head<'a> {
    /// A JSON response of `content_length` bytes.
    pub const fn json(status: Status, content_length: usize, keep_alive: bool) -> Self {
        Head {
            status,
            content_type: Some(JSON),
            content_length: Some(content_length),
            keep_alive,
            allow: Methods::EMPTY,
            extra: &[],
        }
    }
}

/// Writes a response head into `out`: status line, `Content-Type`, `Content-Length`,
/// `Connection`, `Allow` when given, then the extra headers and the blank line.
pub fn write_head(out: &mut Vec<u8>, head: &Head<'_>) {
    use fmt::Write as _;
    let mut w = VecWriter(out);
    // Writing into a Vec cannot fail.
    let _ = write!(
        w,
        "HTTP/1.1 {} {}\r\n",
        head.status.code(),
        head.status.reason()
    );
    if let Some(t) = head.content_type {
        let _ = write!(w, "Content-Type: {t}\r\n");
    }
    if let Some(n) = head.content_length {
        let _ = write!(w, "Content-Length: {n}\r\n");
    }
    let _ = write!(
        w,
        "Connection: {}\r\n",
        if head.keep_alive {
            "keep-alive"
        } else {
            "close"
        }
    );
    if !head.allow.is_empty() {
        let _ = write!(w, "Allow: {}\r\n", head.allow);
    }
    for (name, value) in head.extra {
        let _ = write!(w, "{name}: {value}\r\n");
    }
    w.0.extend_from_slice(b"\r\n");
}

struct VecWriter<'a>(&'a mut Vec<u8>);

impl fmt::Write for VecWriter<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An accepted upload gets room for exactly its request, once (no doubling: every doubling
    /// copied what had arrived), and the connection gives it back after the answer.
    #[test]
    fn an_upload_buffer_is_reserved_once_at_its_size() {
        let limits = Limits {
            max_body_bytes: 100,
            max_upload_bytes: 1 << 20,
            ..Limits::DEFAULT
        };
        let mut conn = Conn::new(limits);
        let body = 300_000;
        let head = alloc::format!(
            "PUT /v1/vms/1/image HTTP/1.1\r\nContent-Type: application/octet-stream\r\n\
             Content-Length: {body}\r\n\r\n"
        );
        assert_eq!(conn.feed(head.as_bytes()), head.len());
        assert_eq!(conn.next_request(), Next::NeedMore);
        let total = head.len() + body;
        let chunk = [0u8; 1460];
        let mut fed = head.len();
        let mut capacities = alloc::vec::Vec::new();
        while fed < total {
            let n = conn.feed(&chunk[..chunk.len().min(total - fed)]);
            assert!(n > 0);
            fed += n;
            if capacities.last() != Some(&conn.buf.capacity()) {
                capacities.push(conn.buf.capacity());
            }
        }
        assert_eq!(capacities, [total], "grown once, to the request's size");
        assert!(matches!(conn.next_request(), Next::Request(r) if r.body.len() == body));
        conn.feed(b"");
        assert!(conn.buf.capacity() <= limits.buffer_capacity() + 1460);
    }
}
