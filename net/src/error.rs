//! Every way a request can fail, and the one JSON shape they all answer with.
//!
//! ```json
//! {"error":{"code":"not_found","message":"no route for GET /v1/foo"}}
//! {"error":{"code":"conflict","message":"cpu is already online","reason":"already_online"}}
//! ```
//!
//! `code` is a stable snake_case string a client can match on; `message` is for people and may
//! change; `reason` appears only where the code has sub-cases (409 `conflict`, 500 `cpu_failed`).
//! [`ApiError`] is a small `Copy` enum (STYLE.md point 8): the words are produced only when the
//! body is written, and a path echoed in a message is escaped by the JSON serializer and cut to
//! [`ECHO_MAX`] bytes so that an error body always stays small.

use core::fmt;

use serde::ser::{Serialize, SerializeStruct, Serializer};

use crate::api::{CpuError, VmError};
use crate::body::BodyError;
use crate::http::{Method, Methods, ParseError, Status};

/// At most this many bytes of a request path are echoed in an error message.
pub const ECHO_MAX: usize = 128;

/// A failed request, from framing through routing to the backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ApiError {
    /// The bytes could not be framed as a request (the connection closes).
    Parse(ParseError),
    /// No route has this path: 404 `not_found`.
    NotFound,
    /// Routes have this path but not this method: 405 `method_not_allowed`, with `Allow`.
    MethodNotAllowed(Methods),
    /// The method token is none we know: 501 `not_implemented`.
    MethodNotImplemented,
    /// An `{id}` in the path is not a decimal `u32`: 400 `invalid_id`.
    InvalidId,
    /// The backend refused or failed a CPU command.
    Cpu(CpuError),
    /// The backend refused or failed a VM command.
    Vm(VmError),
    /// The JSON body is not what the route takes: 400 `invalid_body`, naming the field.
    Body(BodyError),
    /// The body's `Content-Type` is missing or not the one the route takes (given here): 415
    /// `unsupported_media_type`.
    UnsupportedMediaType(&'static str),
    /// The query string is not what the route takes: 400 `invalid_query`.
    InvalidQuery,
    /// A bearer token is configured and the request did not carry it: 401 `unauthorized`,
    /// with `WWW-Authenticate: Bearer`.
    Unauthorized,
    /// The transport has no room for another connection: 503 `too_many_connections`, sent by
    /// the transport before it closes (see [`crate::server::Endpoint::reject`]).
    TooManyConnections,
    /// The connection was idle for too long: 408 `request_timeout`, sent by the transport
    /// before it closes (see [`crate::server::Endpoint::timeout`]).
    RequestTimeout,
    /// The reply would exceed [`crate::http::Limits::max_response_bytes`]: 500
    /// `response_too_large`.
    ResponseTooLarge,
}

impl From<ParseError> for ApiError {
    fn from(e: ParseError) -> Self {
        ApiError::Parse(e)
    }
}

impl From<VmError> for ApiError {
    fn from(e: VmError) -> Self {
        ApiError::Vm(e)
    }
}

impl From<BodyError> for ApiError {
    fn from(e: BodyError) -> Self {
        ApiError::Body(e)
    }
}

impl From<CpuError> for ApiError {
    fn from(e: CpuError) -> Self {
        ApiError::Cpu(e)
    }
}

impl ApiError {
    /// The response status.
    pub const fn status(&self) -> Status {
        match self {
            ApiError::Parse(e) => e.status(),
            ApiError::NotFound
            | ApiError::Cpu(CpuError::NotFound)
            | ApiError::Vm(VmError::NotFound) => Status::NotFound,
            ApiError::MethodNotAllowed(_) => Status::MethodNotAllowed,
            ApiError::MethodNotImplemented => Status::NotImplemented,
            ApiError::InvalidId
            | ApiError::Body(_)
            | ApiError::InvalidQuery
            | ApiError::Vm(
                VmError::UnknownImage | VmError::Unsupported(_) | VmError::BadImage(_),
            ) => Status::BadRequest,
            ApiError::Vm(
                VmError::InvalidState { .. }
                | VmError::NoImage { .. }
                | VmError::UploadWhile { .. }
                | VmError::InputWhile { .. }
                | VmError::InputFull { .. }
                | VmError::NameTaken
                | VmError::TooMany,
            ) => Status::Conflict,
            ApiError::Vm(VmError::NoMemory) => Status::InsufficientStorage,
            ApiError::Vm(VmError::Failed(_)) => Status::InternalServerError,
            ApiError::UnsupportedMediaType(_) => Status::UnsupportedMediaType,
            ApiError::Unauthorized => Status::Unauthorized,
            ApiError::TooManyConnections => Status::ServiceUnavailable,
            ApiError::RequestTimeout => Status::RequestTimeout,
            ApiError::Cpu(CpuError::Conflict(_)) => Status::Conflict,
            ApiError::Cpu(CpuError::Failed(_)) | ApiError::ResponseTooLarge => {
                Status::InternalServerError
            }
        }
    }

    /// The stable snake_case `code` of the JSON body.
    pub const fn code(&self) -> &'static str {
        match self {
            ApiError::Parse(e) => match e {
                ParseError::Malformed => "bad_request",
                ParseError::BadTarget => "bad_target",
                ParseError::BadHeader(_) => "bad_header",
                ParseError::TooManyHeaders => "too_many_headers",
                ParseError::HeadTooLarge => "headers_too_large",
                ParseError::BodyTooLarge => "body_too_large",
                ParseError::ChunkedBody => "length_required",
                ParseError::UnsupportedTransferCoding => "unsupported_transfer_coding",
                ParseError::UnsupportedVersion => "http_version_not_supported",
                ParseError::Unauthorized => "unauthorized",
            },
            ApiError::NotFound => "not_found",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::MethodNotImplemented => "not_implemented",
            ApiError::InvalidId => "invalid_id",
            ApiError::Cpu(CpuError::NotFound) => "cpu_not_found",
            ApiError::Cpu(CpuError::Conflict(_)) => "conflict",
            ApiError::Cpu(CpuError::Failed(_)) => "cpu_failed",
            ApiError::Vm(e) => match e {
                VmError::NotFound => "vm_not_found",
                VmError::InvalidState { .. }
                | VmError::NoImage { .. }
                | VmError::UploadWhile { .. }
                | VmError::InputWhile { .. } => "invalid_state",
                VmError::InputFull { .. } => "console_busy",
                VmError::NameTaken => "name_taken",
                VmError::TooMany => "too_many_vms",
                VmError::NoMemory => "insufficient_storage",
                VmError::UnknownImage => "unknown_image",
                VmError::Unsupported(_) => "unsupported",
                VmError::BadImage(_) => "bad_image",
                VmError::Failed(_) => "vm_failed",
            },
            ApiError::Body(_) => "invalid_body",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::InvalidQuery => "invalid_query",
            ApiError::Unauthorized => "unauthorized",
            ApiError::TooManyConnections => "too_many_connections",
            ApiError::RequestTimeout => "request_timeout",
            ApiError::ResponseTooLarge => "response_too_large",
        }
    }

    /// The `reason` of the JSON body, for codes with sub-cases.
    pub const fn reason(&self) -> Option<&'static str> {
        match self {
            ApiError::Cpu(CpuError::Conflict(c)) => Some(c.as_str()),
            ApiError::Cpu(CpuError::Failed(f)) => Some(f.as_str()),
            _ => None,
        }
    }

    /// The methods for the `Allow` header (empty unless 405).
    pub const fn allow(&self) -> Methods {
        match self {
            ApiError::MethodNotAllowed(m) => *m,
            _ => Methods::EMPTY,
        }
    }

    /// Whether the connection must close after this error's response: framing errors, and
    /// the two the transport sends before closing.
    pub const fn closes_connection(&self) -> bool {
        matches!(
            self,
            ApiError::Parse(_) | ApiError::TooManyConnections | ApiError::RequestTimeout
        )
    }
}

/// The request an error is about, for its message. Absent for framing errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Context<'a> {
    /// The request's method.
    pub method: Method,
    /// The request's path.
    pub path: &'a str,
}

/// The JSON error body: `{"error":{"code":..,"message":..[,"reason":..]}}`.
#[derive(Clone, Copy, Debug)]
pub struct ErrorBody<'a> {
    /// The error.
    pub error: ApiError,
    /// The request it is about, if known.
    pub context: Option<Context<'a>>,
}

impl Serialize for ErrorBody<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut outer = s.serialize_struct("ErrorBody", 1)?;
        outer.serialize_field("error", &Inner(self))?;
        outer.end()
    }
}

struct Inner<'b, 'a>(&'b ErrorBody<'a>);

impl Serialize for Inner<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let e = &self.0.error;
        let reason = e.reason();
        let mut obj = s.serialize_struct("Error", 2 + usize::from(reason.is_some()))?;
        obj.serialize_field("code", e.code())?;
        obj.serialize_field("message", &Message(self.0))?;
        if let Some(r) = reason {
            obj.serialize_field("reason", r)?;
        }
        obj.end()
    }
}

/// The human-readable message, serialized through `collect_str` so the serializer escapes it.
struct Message<'b, 'a>(&'b ErrorBody<'a>);

impl Serialize for Message<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A path cut to [`ECHO_MAX`] bytes at a character boundary, with `...` when cut.
struct Echo<'a>(&'a str);

impl fmt::Display for Echo<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.len() <= ECHO_MAX {
            return f.write_str(self.0);
        }
        let mut end = ECHO_MAX;
        while !self.0.is_char_boundary(end) {
            end -= 1;
        }
        write!(f, "{}...", &self.0[..end])
    }
}

impl fmt::Display for Message<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ctx = self.0.context;
        let path = Echo(ctx.map_or("", |c| c.path));
        let method = ctx.map_or("", |c| c.method.as_str());
        match self.0.error {
            ApiError::Parse(e) => match e {
                ParseError::Malformed => f.write_str("malformed HTTP request"),
                ParseError::BadTarget => {
                    f.write_str("request target must be a path starting with /")
                }
                ParseError::BadHeader(h) => write!(f, "invalid {} header", h.as_str()),
                ParseError::TooManyHeaders => f.write_str("too many header fields"),
                ParseError::HeadTooLarge => f.write_str("request head too large"),
                ParseError::BodyTooLarge => f.write_str("request body too large"),
                ParseError::ChunkedBody => {
                    f.write_str("chunked request bodies are not supported; send Content-Length")
                }
                ParseError::UnsupportedTransferCoding => f.write_str("unsupported transfer coding"),
                ParseError::UnsupportedVersion => {
                    f.write_str("HTTP version not supported; use HTTP/1.1")
                }
                ParseError::Unauthorized => f.write_str("missing or wrong bearer token"),
            },
            ApiError::NotFound => write!(f, "no route for {method} {path}"),
            ApiError::MethodNotAllowed(allow) => {
                write!(f, "{method} not allowed on {path}; allowed: {allow}")
            }
            ApiError::MethodNotImplemented => f.write_str("request method not implemented"),
            ApiError::InvalidId => write!(f, "id must be a decimal u32 in {path}"),
            ApiError::Cpu(CpuError::NotFound) => write!(f, "no such cpu: {path}"),
            ApiError::Cpu(CpuError::Conflict(c)) => {
                use crate::api::Conflict as C;
                f.write_str(match c {
                    C::AlreadyOnline => "cpu is already online",
                    C::AlreadyOffline => "cpu is already offline",
                    C::LastOnline => "cpu must stay online: it is the last online cpu",
                    C::Busy => "a transition on this cpu is in progress",
                    C::Rebooting => "the hypervisor is rebooting",
                    C::ServesEndpoint => "cpu must stay online: it serves the control endpoint",
                    C::TdxKeysInUse => {
                        "cpu must stay online: last of its package while TDX key ids are in use"
                    }
                })
            }
            ApiError::Cpu(CpuError::Failed(fail)) => {
                use crate::api::Failure as F;
                f.write_str(match fail {
                    F::VirtEnable => "enabling virtualization failed; the cpu was rolled back",
                    F::VirtDisable => "disabling virtualization failed; the cpu was rolled back",
                    F::Timeout => "the cpu did not answer in time",
                })
            }
            ApiError::Vm(e) => match e {
                VmError::NotFound => write!(f, "no such vm: {path}"),
                VmError::InvalidState { from, event } => {
                    hv::vm::TransitionError::WrongState { from, event }.fmt(f)
                }
                VmError::NoImage { event } => write!(
                    f,
                    "cannot {} a VM that has no image yet; upload one first (PUT /v1/vms/{{id}}/image)",
                    event.as_str()
                ),
                VmError::UploadWhile { from } => write!(
                    f,
                    "cannot upload an image to a VM that is {}; stop it first",
                    from.as_str()
                ),
                VmError::InputWhile { from } => write!(
                    f,
                    "cannot send console input to a VM that is {}; start it first",
                    from.as_str()
                ),
                VmError::InputFull { free, needed } => write!(
                    f,
                    "console input queue has {free} bytes free and the request has {needed}; \
                     nothing was queued: retry once the guest has read its input"
                ),
                VmError::NameTaken => f.write_str("a vm with that name exists"),
                VmError::TooMany => f.write_str("no room for another vm"),
                VmError::NoMemory => f.write_str("not enough free memory for the vm"),
                VmError::UnknownImage => f.write_str("no built-in image has that name"),
                VmError::Unsupported(why) | VmError::BadImage(why) | VmError::Failed(why) => {
                    f.write_str(why)
                }
            },
            ApiError::Body(e) => e.fmt(f),
            ApiError::UnsupportedMediaType(want) => {
                write!(f, "Content-Type must be {want}")
            }
            ApiError::InvalidQuery => f.write_str(
                "invalid query: expected offset=N (a decimal u64) and wait_ms=T (0 to 30000), \
                 each at most once, or nothing",
            ),
            ApiError::Unauthorized => f.write_str("missing or wrong bearer token"),
            ApiError::TooManyConnections => f.write_str("too many connections; try again later"),
            ApiError::RequestTimeout => f.write_str("connection idle for too long"),
            ApiError::ResponseTooLarge => f.write_str("response too large"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Conflict;
    use alloc::string::ToString;

    fn json(body: &ErrorBody<'_>) -> std::string::String {
        let mut buf = [0u8; 1024];
        let n = serde_json_core::to_slice(body, &mut buf).unwrap();
        let s = core::str::from_utf8(&buf[..n]).unwrap().to_string();
        // The reference serializer agrees byte for byte.
        assert_eq!(s, serde_json::to_string(body).unwrap());
        s
    }

    #[test]
    fn shape() {
        let ctx = Some(Context {
            method: Method::Get,
            path: "/v1/foo",
        });
        assert_eq!(
            json(&ErrorBody {
                error: ApiError::NotFound,
                context: ctx
            }),
            r#"{"error":{"code":"not_found","message":"no route for GET /v1/foo"}}"#
        );
        let conflict = ApiError::Cpu(CpuError::Conflict(Conflict::Busy));
        assert_eq!(
            json(&ErrorBody {
                error: conflict,
                context: ctx
            }),
            r#"{"error":{"code":"conflict","message":"a transition on this cpu is in progress","reason":"busy"}}"#
        );
    }

    #[test]
    fn echo_escapes_and_cuts_at_char_boundaries() {
        let path = "/\"\\\u{1}\u{e9}";
        let s = json(&ErrorBody {
            error: ApiError::NotFound,
            context: Some(Context {
                method: Method::Post,
                path,
            }),
        });
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(
            v["error"]["message"],
            std::format!("no route for POST {path}")
        );

        // 201 bytes with char boundaries at odd offsets, so ECHO_MAX falls inside a char.
        let long = std::format!("a{}", "\u{e9}".repeat(100));
        let cut = Echo(&long).to_string();
        assert!(cut.ends_with("...") && cut.len() <= ECHO_MAX + 3);
        assert_eq!(Echo("/short").to_string(), "/short");
    }

    #[test]
    fn statuses_and_codes_are_distinct_where_they_should_be() {
        use crate::http::HeaderName;
        let all = [
            ApiError::Parse(ParseError::Malformed),
            ApiError::Parse(ParseError::BadTarget),
            ApiError::Parse(ParseError::BadHeader(HeaderName::ContentLength)),
            ApiError::Parse(ParseError::TooManyHeaders),
            ApiError::Parse(ParseError::HeadTooLarge),
            ApiError::Parse(ParseError::BodyTooLarge),
            ApiError::Parse(ParseError::ChunkedBody),
            ApiError::Parse(ParseError::UnsupportedTransferCoding),
            ApiError::Parse(ParseError::UnsupportedVersion),
            ApiError::NotFound,
            ApiError::MethodNotAllowed(Methods::EMPTY.with(Method::Get)),
            ApiError::MethodNotImplemented,
            ApiError::InvalidId,
            ApiError::Cpu(CpuError::NotFound),
            ApiError::Cpu(CpuError::Conflict(Conflict::Rebooting)),
            ApiError::Cpu(CpuError::Failed(crate::api::Failure::Timeout)),
            ApiError::Vm(VmError::NotFound),
            ApiError::Vm(VmError::InvalidState {
                from: hv::vm::VmState::Running,
                event: hv::vm::VmEvent::Delete,
            }),
            ApiError::Vm(VmError::NameTaken),
            ApiError::Vm(VmError::TooMany),
            ApiError::Vm(VmError::NoMemory),
            ApiError::Vm(VmError::UnknownImage),
            ApiError::Vm(VmError::Unsupported("x")),
            ApiError::Vm(VmError::BadImage("x")),
            ApiError::Vm(VmError::Failed("x")),
            ApiError::Vm(VmError::InputFull { free: 1, needed: 2 }),
            ApiError::Body(BodyError::Syntax),
            ApiError::UnsupportedMediaType("application/json"),
            ApiError::InvalidQuery,
            ApiError::Unauthorized,
            ApiError::TooManyConnections,
            ApiError::RequestTimeout,
            ApiError::ResponseTooLarge,
        ];
        for (i, a) in all.iter().enumerate() {
            assert!(a.status().code() >= 400);
            assert_eq!(
                a.closes_connection(),
                matches!(
                    a,
                    ApiError::Parse(_) | ApiError::TooManyConnections | ApiError::RequestTimeout
                )
            );
            for b in &all[i + 1..] {
                assert_ne!(a.code(), b.code(), "{a:?} and {b:?}");
            }
        }
    }
}
