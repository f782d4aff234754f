//! From a request's method and path to a typed [`Command`].
//!
//! The routes are data, [`ROUTES`]: a static list of (method, path pattern, operation), so that
//! a test can hold it against the OpenAPI document and the 405 `Allow` header is derived rather
//! than written by hand. Patterns are literal segments and `{id}` captures; an `{id}` must be a
//! decimal `u32`.
//!
//! Decisions:
//! * Unknown path: 404 `not_found`. Matching is exact: no trailing `/`, no empty segments, no
//!   percent-decoding.
//! * Known path, other method: 405 `method_not_allowed` with `Allow` listing every method some
//!   route accepts on that path.
//! * A method token we do not know at all (`Method::Other`, e.g. `BREW` or lower-case `get`):
//!   501 `not_implemented`, as RFC 9110 §9.1 asks, before the path is looked at.
//! * An `{id}` that is not a decimal `u32` (`/v1/cpus/abc`, `/v1/cpus/-1`, `/v1/cpus/99999999999`):
//!   400 `invalid_id`. The path has the right shape, so 404 would suggest a wrong URL; 400 says
//!   the parameter is malformed, which is what an OpenAPI `uint32` parameter check reports. A
//!   well-formed id that names no CPU is the backend's 404 `cpu_not_found`.

use crate::error::ApiError;
use crate::http::{Method, Methods};

/// A command for the hypervisor, decoded from a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Command {
    /// `GET /v1/health`
    Health,
    /// `GET /v1/cpus`
    ListCpus,
    /// `GET /v1/cpus/{id}`
    GetCpu(u32),
    /// `POST /v1/cpus/{id}/offline`
    CpuOffline(u32),
    /// `POST /v1/cpus/{id}/online`
    CpuOnline(u32),
    /// `POST /v1/host/reboot`
    Reboot,
}

/// An operation of the API: a [`Command`] without its arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// [`Command::Health`]
    Health,
    /// [`Command::ListCpus`]
    ListCpus,
    /// [`Command::GetCpu`]
    GetCpu,
    /// [`Command::CpuOffline`]
    CpuOffline,
    /// [`Command::CpuOnline`]
    CpuOnline,
    /// [`Command::Reboot`]
    Reboot,
}

impl Op {
    /// The OpenAPI `operationId` of this operation.
    pub const fn operation_id(self) -> &'static str {
        match self {
            Op::Health => "getHealth",
            Op::ListCpus => "listCpus",
            Op::GetCpu => "getCpu",
            Op::CpuOffline => "offlineCpu",
            Op::CpuOnline => "onlineCpu",
            Op::Reboot => "rebootHost",
        }
    }

    fn command(self, id: Option<u32>) -> Command {
        // Every pattern with an `{id}` belongs to an op that takes one, and the other way round
        // (checked by the `table_is_consistent` test), so the default is never used.
        let id = id.unwrap_or_default();
        match self {
            Op::Health => Command::Health,
            Op::ListCpus => Command::ListCpus,
            Op::GetCpu => Command::GetCpu(id),
            Op::CpuOffline => Command::CpuOffline(id),
            Op::CpuOnline => Command::CpuOnline(id),
            Op::Reboot => Command::Reboot,
        }
    }

    /// Whether the operation's path has an `{id}`.
    pub const fn takes_id(self) -> bool {
        matches!(self, Op::GetCpu | Op::CpuOffline | Op::CpuOnline)
    }
}

/// One entry of the route table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    /// The method this route answers.
    pub method: Method,
    /// The path pattern, OpenAPI style: `/v1/cpus/{id}`.
    pub pattern: &'static str,
    /// What it does.
    pub op: Op,
}

/// The route table.
pub const ROUTES: &[Route] = &[
    Route {
        method: Method::Get,
        pattern: "/v1/health",
        op: Op::Health,
    },
    Route {
        method: Method::Get,
        pattern: "/v1/cpus",
        op: Op::ListCpus,
    },
    Route {
        method: Method::Get,
        pattern: "/v1/cpus/{id}",
        op: Op::GetCpu,
    },
    Route {
        method: Method::Post,
        pattern: "/v1/cpus/{id}/offline",
        op: Op::CpuOffline,
    },
    Route {
        method: Method::Post,
        pattern: "/v1/cpus/{id}/online",
        op: Op::CpuOnline,
    },
    Route {
        method: Method::Post,
        pattern: "/v1/host/reboot",
        op: Op::Reboot,
    },
];

/// The capture name in patterns.
const ID: &str = "{id}";

/// Routes a request through [`ROUTES`].
pub fn route(method: Method, path: &str) -> Result<Command, ApiError> {
    if method == Method::Other {
        return Err(ApiError::MethodNotImplemented);
    }
    let mut allow = Methods::EMPTY;
    for r in ROUTES {
        let Some(capture) = match_pattern(r.pattern, path) else {
            continue;
        };
        if r.method != method {
            allow = allow.with(r.method);
            continue;
        }
        let id = match capture {
            Some(s) => Some(parse_id(s).ok_or(ApiError::InvalidId)?),
            None => None,
        };
        return Ok(r.op.command(id));
    }
    if allow.is_empty() {
        Err(ApiError::NotFound)
    } else {
        Err(ApiError::MethodNotAllowed(allow))
    }
}

/// Whether `path` has the shape of `pattern`, and the `{id}` segment if there is one.
fn match_pattern<'p>(pattern: &str, path: &'p str) -> Option<Option<&'p str>> {
    let mut capture = None;
    let mut pat = pattern.split('/');
    let mut segs = path.split('/');
    loop {
        match (pat.next(), segs.next()) {
            (None, None) => return Some(capture),
            (Some(ID), Some(seg)) if !seg.is_empty() => capture = Some(seg),
            (Some(p), Some(seg)) if p == seg => {}
            _ => return None,
        }
    }
}

/// A decimal `u32`: digits only (no sign, no spaces), no overflow.
fn parse_id(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_route() {
        let cases = [
            (Method::Get, "/v1/health", Command::Health),
            (Method::Get, "/v1/cpus", Command::ListCpus),
            (Method::Get, "/v1/cpus/3", Command::GetCpu(3)),
            (
                Method::Get,
                "/v1/cpus/4294967295",
                Command::GetCpu(u32::MAX),
            ),
            (Method::Post, "/v1/cpus/0/offline", Command::CpuOffline(0)),
            (Method::Post, "/v1/cpus/17/online", Command::CpuOnline(17)),
        ];
        for (m, p, c) in cases {
            assert_eq!(route(m, p), Ok(c), "{m} {p}");
        }
    }

    #[test]
    fn unknown_paths_are_404() {
        for p in [
            "/",
            "/v1",
            "/v1/",
            "/v1/foo",
            "/v1/health/",
            "/v1/cpus/",
            "/v1//cpus",
            "/v2/health",
            "/v1/cpus/1/reboot",
            "/v1/cpus/1/online/x",
            "/V1/health",
            "",
        ] {
            assert_eq!(route(Method::Get, p), Err(ApiError::NotFound), "{p}");
        }
    }

    #[test]
    fn wrong_method_is_405_with_allow() {
        let get = Methods::EMPTY.with(Method::Get);
        let post = Methods::EMPTY.with(Method::Post);
        assert_eq!(
            route(Method::Post, "/v1/health"),
            Err(ApiError::MethodNotAllowed(get))
        );
        assert_eq!(
            route(Method::Delete, "/v1/cpus"),
            Err(ApiError::MethodNotAllowed(get))
        );
        assert_eq!(
            route(Method::Put, "/v1/cpus/1"),
            Err(ApiError::MethodNotAllowed(get))
        );
        assert_eq!(
            route(Method::Get, "/v1/cpus/1/online"),
            Err(ApiError::MethodNotAllowed(post))
        );
        assert_eq!(
            route(Method::Head, "/v1/cpus/x/offline"),
            Err(ApiError::MethodNotAllowed(post))
        );
        assert_eq!(post.to_string(), "POST");
        assert_eq!(get.with(Method::Post).to_string(), "GET, POST");
    }

    #[test]
    fn bad_ids_are_400() {
        for p in [
            "/v1/cpus/abc",
            "/v1/cpus/-1",
            "/v1/cpus/+1",
            "/v1/cpus/4294967296",
            "/v1/cpus/1.0",
        ] {
            assert_eq!(route(Method::Get, p), Err(ApiError::InvalidId), "{p}");
        }
        assert_eq!(
            route(Method::Post, "/v1/cpus/x/online"),
            Err(ApiError::InvalidId)
        );
    }

    #[test]
    fn unknown_method_is_501() {
        assert_eq!(
            route(Method::Other, "/v1/health"),
            Err(ApiError::MethodNotImplemented)
        );
        assert_eq!(
            route(Method::Other, "/nope"),
            Err(ApiError::MethodNotImplemented)
        );
    }

    #[test]
    fn table_is_consistent() {
        for (i, r) in ROUTES.iter().enumerate() {
            assert!(r.pattern.starts_with('/'), "{r:?}");
            assert_eq!(r.pattern.contains(ID), r.op.takes_id(), "{r:?}");
            for other in &ROUTES[i + 1..] {
                assert!(
                    !(r.pattern == other.pattern && r.method == other.method),
                    "duplicate route {r:?}"
                );
                assert_ne!(r.op, other.op, "op routed twice");
            }
        }
    }
}
