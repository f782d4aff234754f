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

use crate::api::CpuError;
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
    /// The reply would exceed [`crate::http::Limits::max_response_bytes`]: 500
    /// `response_too_large`.
    ResponseTooLarge,
}

impl From<ParseError> for ApiError {
    fn from(e: ParseError) -> Self {
        ApiError::Parse(e)
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
            ApiError::NotFound | ApiError::Cpu(CpuError::NotFound) => Status::NotFound,
            ApiError::MethodNotAllowed(_) => Status::MethodNotAllowed,
            ApiError::MethodNotImplemented => Status::NotImplemented,
            ApiError::InvalidId => Status::BadRequest,
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
            },
            ApiError::NotFound => "not_found",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::MethodNotImplemented => "not_implemented",
            ApiError::InvalidId => "invalid_id",
            ApiError::Cpu(CpuError::NotFound) => "cpu_not_found",
            ApiError::Cpu(CpuError::Conflict(_)) => "conflict",
            ApiError::Cpu(CpuError::Failed(_)) => "cpu_failed",
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

    /// Whether the connection must close after this error's response (framing errors).
    pub const fn closes_connection(&self) -> bool {
        matches!(self, ApiError::Parse(_))
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
            },
            ApiError::NotFound => write!(f, "no route for {method} {path}"),
            ApiError::MethodNotAllowed(allow) => {
                write!(f, "{method} not allowed on {path}; allowed: {allow}")
            }
            ApiError::MethodNotImplemented => f.write_str("request method not implemented"),
            ApiError::InvalidId => write!(f, "cpu id must be a decimal u32 in {path}"),
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
            ApiError::ResponseTooLarge,
        ];
        for (i, a) in all.iter().enumerate() {
            assert!(a.status().code() >= 400);
            assert_eq!(a.closes_connection(), matches!(a, ApiError::Parse(_)));
            for b in &all[i + 1..] {
                assert_ne!(a.code(), b.code(), "{a:?} and {b:?}");
            }
        }
    }
}
