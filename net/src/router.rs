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
//! * A method token we do not know at all (`Method::Other`, e.g. `TRACE`, `BREW` or lower-case
//!   `get`) on a known path is a method that resource does not allow: 405 with `Allow`, like
//!   any other (what OpenAPI clients and testers such as schemathesis expect: a 5xx says the
//!   server failed). On an unknown path it is 501 `not_implemented` (RFC 9110 §15.6.2).
//! * An `{id}` that is not a decimal `u32` (`/v1/cpus/abc`, `/v1/cpus/-1`, `/v1/cpus/99999999999`):
//!   400 `invalid_id`. The path has the right shape, so 404 would suggest a wrong URL; 400 says
//!   the parameter is malformed, which is what an OpenAPI `uint32` parameter check reports. A
//!   well-formed id that names no CPU is the backend's 404 `cpu_not_found` (`vm_not_found`).
//! * Each route says what body it takes ([`BodyKind`]): the HTTP layer picks the body limit from
//!   it (uploads have their own), and the server checks `Content-Type` against it (415).

use crate::api::VmAction;
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
    /// `GET /v1/host`
    Host,
    /// `GET /v1/metrics`
    Metrics,
    /// `GET /v1/vms`
    ListVms,
    /// `POST /v1/vms` (JSON body)
    CreateVm,
    /// `GET /v1/vms/{id}`
    GetVm(u32),
    /// `DELETE /v1/vms/{id}`
    DeleteVm(u32),
    /// `POST /v1/vms/{id}/{start,pause,resume,stop,reset}`
    VmAction(u32, VmAction),
    /// `GET /v1/vms/{id}/console?offset=N&wait_ms=T`
    VmConsole(u32),
    /// `POST /v1/vms/{id}/console` (octet-stream body: bytes for the guest's COM1)
    VmConsoleInput(u32),
    /// `GET /v1/vms/{id}/stats`
    VmStats(u32),
    /// `GET /v1/vms/{id}/pmu`
    GetVmPmu(u32),
    /// `PUT /v1/vms/{id}/pmu` (JSON body)
    SetVmPmu(u32),
    /// `PUT /v1/vms/{id}/image` (octet-stream body)
    UploadVmImage(u32),
    /// `PUT /v1/vms/{id}/initrd` (octet-stream body)
    UploadVmInitrd(u32),
}

/// What body a route takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BodyKind {
    /// None: any body sent is read (within [`crate::Limits::max_body_bytes`]) and ignored.
    None,
    /// A JSON document: `Content-Type: application/json`, at most `max_body_bytes`.
    Json,
    /// Raw bytes: `Content-Type: application/octet-stream`, at most
    /// [`crate::Limits::max_upload_bytes`].
    Upload,
    /// Raw bytes for a guest's console: `Content-Type: application/octet-stream`, at most
    /// [`crate::api::CONSOLE_INPUT_MAX`] (and [`crate::Limits::max_body_bytes`]).
    Input,
}

impl BodyKind {
    /// The media type the body must have, if any.
    pub const fn media_type(self) -> Option<&'static str> {
        match self {
            BodyKind::None => None,
            BodyKind::Json => Some("application/json"),
            BodyKind::Upload | BodyKind::Input => Some("application/octet-stream"),
        }
    }
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
    /// [`Command::Host`]
    Host,
    /// [`Command::Metrics`]
    Metrics,
    /// [`Command::ListVms`]
    ListVms,
    /// [`Command::CreateVm`]
    CreateVm,
    /// [`Command::GetVm`]
    GetVm,
    /// [`Command::DeleteVm`]
    DeleteVm,
    /// [`Command::VmAction`] with [`VmAction::Start`]
    StartVm,
    /// [`Command::VmAction`] with [`VmAction::Pause`]
    PauseVm,
    /// [`Command::VmAction`] with [`VmAction::Resume`]
    ResumeVm,
    /// [`Command::VmAction`] with [`VmAction::Stop`]
    StopVm,
    /// [`Command::VmAction`] with [`VmAction::Reset`]
    ResetVm,
    /// [`Command::VmConsole`]
    VmConsole,
    /// [`Command::VmConsoleInput`]
    VmConsoleInput,
    /// [`Command::VmStats`]
    VmStats,
    /// [`Command::GetVmPmu`]
    GetVmPmu,
    /// [`Command::SetVmPmu`]
    SetVmPmu,
    /// [`Command::UploadVmImage`]
    UploadVmImage,
    /// [`Command::UploadVmInitrd`]
    UploadVmInitrd,
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
            Op::Host => "getHost",
            Op::Metrics => "getMetrics",
            Op::ListVms => "listVms",
            Op::CreateVm => "createVm",
            Op::GetVm => "getVm",
            Op::DeleteVm => "deleteVm",
            Op::StartVm => "startVm",
            Op::PauseVm => "pauseVm",
            Op::ResumeVm => "resumeVm",
            Op::StopVm => "stopVm",
            Op::ResetVm => "resetVm",
            Op::VmConsole => "getVmConsole",
            Op::VmConsoleInput => "sendVmConsole",
            Op::VmStats => "getVmStats",
            Op::GetVmPmu => "getVmPmu",
            Op::SetVmPmu => "setVmPmu",
            Op::UploadVmImage => "uploadVmImage",
            Op::UploadVmInitrd => "uploadVmInitrd",
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
            Op::Host => Command::Host,
            Op::Metrics => Command::Metrics,
            Op::ListVms => Command::ListVms,
            Op::CreateVm => Command::CreateVm,
            Op::GetVm => Command::GetVm(id),
            Op::DeleteVm => Command::DeleteVm(id),
            Op::StartVm => Command::VmAction(id, VmAction::Start),
            Op::PauseVm => Command::VmAction(id, VmAction::Pause),
            Op::ResumeVm => Command::VmAction(id, VmAction::Resume),
            Op::StopVm => Command::VmAction(id, VmAction::Stop),
            Op::ResetVm => Command::VmAction(id, VmAction::Reset),
            Op::VmConsole => Command::VmConsole(id),
            Op::VmConsoleInput => Command::VmConsoleInput(id),
            Op::VmStats => Command::VmStats(id),
            Op::GetVmPmu => Command::GetVmPmu(id),
            Op::SetVmPmu => Command::SetVmPmu(id),
            Op::UploadVmImage => Command::UploadVmImage(id),
            Op::UploadVmInitrd => Command::UploadVmInitrd(id),
        }
    }

    /// Whether the operation's path has an `{id}`.
    pub const fn takes_id(self) -> bool {
        !matches!(
            self,
            Op::Health
                | Op::ListCpus
                | Op::Reboot
                | Op::Host
                | Op::Metrics
                | Op::ListVms
                | Op::CreateVm
        )
    }

    /// Every operation.
    pub const ALL: [Op; 24] = [
        Op::Health,
        Op::ListCpus,
        Op::GetCpu,
        Op::CpuOffline,
        Op::CpuOnline,
        Op::Reboot,
        Op::Host,
        Op::Metrics,
        Op::ListVms,
        Op::CreateVm,
        Op::GetVm,
        Op::DeleteVm,
        Op::StartVm,
        Op::PauseVm,
        Op::ResumeVm,
        Op::StopVm,
        Op::ResetVm,
        Op::VmConsole,
        Op::VmConsoleInput,
        Op::VmStats,
        Op::GetVmPmu,
        Op::SetVmPmu,
        Op::UploadVmImage,
        Op::UploadVmInitrd,
    ];
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
    /// What body it takes.
    pub body: BodyKind,
}

/// The route table.
pub const ROUTES: &[Route] = &[
    Route {
        method: Method::Get,
        pattern: "/v1/health",
        op: Op::Health,
        body: BodyKind::None,
    },
    Route {
        method: Method::Get,
        pattern: "/v1/cpus",
        op: Op::ListCpus,
        body: BodyKind::None,
    },
    Route {
        method: Method::Get,
        pattern: "/v1/cpus/{id}",
        op: Op::GetCpu,
        body: BodyKind::None,
    },
    Route {
        method: Method::Post,
        pattern: "/v1/cpus/{id}/offline",
        op: Op::CpuOffline,
        body: BodyKind::None,
    },
    Route {
        method: Method::Post,
        pattern: "/v1/cpus/{id}/online",
        op: Op::CpuOnline,
        body: BodyKind::None,
    },
    Route {
        method: Method::Post,
        pattern: "/v1/host/reboot",
        op: Op::Reboot,
        body: BodyKind::None,
    },
    Route {
        method: Method::Get,
        pattern: "/v1/host",
        op: Op::Host,
        body: BodyKind::None,
    },
    Route {
        method: Method::Get,
        pattern: "/v1/metrics",
        op: Op::Metrics,
        body: BodyKind::None,
    },
    Route {
        method: Method::Get,
        pattern: "/v1/vms",
        op: Op::ListVms,
        body: BodyKind::None,
    },
    Route {
        method: Method::Post,
        pattern: "/v1/vms",
        op: Op::CreateVm,
        body: BodyKind::Json,
    },
    Route {
        method: Method::Get,
        pattern: "/v1/vms/{id}",
        op: Op::GetVm,
        body: BodyKind::None,
    },
    Route {
        method: Method::Delete,
        pattern: "/v1/vms/{id}",
        op: Op::DeleteVm,
        body: BodyKind::None,
    },
    Route {
        method: Method::Post,
        pattern: "/v1/vms/{id}/start",
        op: Op::StartVm,
        body: BodyKind::None,
    },
    Route {
        method: Method::Post,
        pattern: "/v1/vms/{id}/pause",
        op: Op::PauseVm,
        body: BodyKind::None,
    },
    Route {
        method: Method::Post,
        pattern: "/v1/vms/{id}/resume",
        op: Op::ResumeVm,
        body: BodyKind::None,
    },
    Route {
        method: Method::Post,
        pattern: "/v1/vms/{id}/stop",
        op: Op::StopVm,
        body: BodyKind::None,
    },
    Route {
        method: Method::Post,
        pattern: "/v1/vms/{id}/reset",
        op: Op::ResetVm,
        body: BodyKind::None,
    },
    Route {
        method: Method::Get,
        pattern: "/v1/vms/{id}/console",
        op: Op::VmConsole,
        body: BodyKind::None,
    },
    Route {
        method: Method::Post,
        pattern: "/v1/vms/{id}/console",
        op: Op::VmConsoleInput,
        body: BodyKind::Input,
    },
    Route {
        method: Method::Get,
        pattern: "/v1/vms/{id}/stats",
        op: Op::VmStats,
        body: BodyKind::None,
    },
    Route {
        method: Method::Get,
        pattern: "/v1/vms/{id}/pmu",
        op: Op::GetVmPmu,
        body: BodyKind::None,
    },
    Route {
        method: Method::Put,
        pattern: "/v1/vms/{id}/pmu",
        op: Op::SetVmPmu,
        body: BodyKind::Json,
    },
    Route {
        method: Method::Put,
        pattern: "/v1/vms/{id}/image",
        op: Op::UploadVmImage,
        body: BodyKind::Upload,
    },
    Route {
        method: Method::Put,
        pattern: "/v1/vms/{id}/initrd",
        op: Op::UploadVmInitrd,
        body: BodyKind::Upload,
    },
];

/// The capture name in patterns.
const ID: &str = "{id}";

/// The body a request to `method path` may carry: that of its route, [`BodyKind::None`] when
/// no route matches (the request will be refused anyway). Used by the HTTP layer to pick the
/// body limit from the head alone.
pub fn body_kind(method: Method, path: &str) -> BodyKind {
    ROUTES
        .iter()
        .find(|r| r.method == method && match_pattern(r.pattern, path).is_some())
        .map_or(BodyKind::None, |r| r.body)
}

/// The route a command came from.
pub fn route_of(op: Op) -> &'static Route {
    // Every op has exactly one route (checked by `table_is_consistent`).
    ROUTES.iter().find(|r| r.op == op).unwrap_or(&ROUTES[0])
}

impl Command {
    /// The operation of this command.
    pub const fn op(self) -> Op {
        match self {
            Command::Health => Op::Health,
            Command::ListCpus => Op::ListCpus,
            Command::GetCpu(_) => Op::GetCpu,
            Command::CpuOffline(_) => Op::CpuOffline,
            Command::CpuOnline(_) => Op::CpuOnline,
            Command::Reboot => Op::Reboot,
            Command::Host => Op::Host,
            Command::Metrics => Op::Metrics,
            Command::ListVms => Op::ListVms,
            Command::CreateVm => Op::CreateVm,
            Command::GetVm(_) => Op::GetVm,
            Command::DeleteVm(_) => Op::DeleteVm,
            Command::VmAction(_, VmAction::Start) => Op::StartVm,
            Command::VmAction(_, VmAction::Pause) => Op::PauseVm,
            Command::VmAction(_, VmAction::Resume) => Op::ResumeVm,
            Command::VmAction(_, VmAction::Stop) => Op::StopVm,
            Command::VmAction(_, VmAction::Reset) => Op::ResetVm,
            Command::VmConsole(_) => Op::VmConsole,
            Command::VmConsoleInput(_) => Op::VmConsoleInput,
            Command::VmStats(_) => Op::VmStats,
            Command::GetVmPmu(_) => Op::GetVmPmu,
            Command::SetVmPmu(_) => Op::SetVmPmu,
            Command::UploadVmImage(_) => Op::UploadVmImage,
            Command::UploadVmInitrd(_) => Op::UploadVmInitrd,
        }
    }
}

/// Routes a request through [`ROUTES`].
pub fn route(method: Method, path: &str) -> Result<Command, ApiError> {
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
    if allow.is_empty() && method == Method::Other {
        Err(ApiError::MethodNotImplemented)
    } else if allow.is_empty() {
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
            (Method::Get, "/v1/host", Command::Host),
            (Method::Get, "/v1/metrics", Command::Metrics),
            (Method::Get, "/v1/vms", Command::ListVms),
            (Method::Post, "/v1/vms", Command::CreateVm),
            (Method::Get, "/v1/vms/7", Command::GetVm(7)),
            (Method::Delete, "/v1/vms/7", Command::DeleteVm(7)),
            (
                Method::Post,
                "/v1/vms/1/start",
                Command::VmAction(1, VmAction::Start),
            ),
            (
                Method::Post,
                "/v1/vms/1/pause",
                Command::VmAction(1, VmAction::Pause),
            ),
            (
                Method::Post,
                "/v1/vms/1/resume",
                Command::VmAction(1, VmAction::Resume),
            ),
            (
                Method::Post,
                "/v1/vms/1/stop",
                Command::VmAction(1, VmAction::Stop),
            ),
            (
                Method::Post,
                "/v1/vms/1/reset",
                Command::VmAction(1, VmAction::Reset),
            ),
            (Method::Get, "/v1/vms/2/console", Command::VmConsole(2)),
            (
                Method::Post,
                "/v1/vms/2/console",
                Command::VmConsoleInput(2),
            ),
            (Method::Get, "/v1/vms/2/stats", Command::VmStats(2)),
            (Method::Put, "/v1/vms/2/pmu", Command::SetVmPmu(2)),
            (Method::Put, "/v1/vms/2/image", Command::UploadVmImage(2)),
            (Method::Put, "/v1/vms/2/initrd", Command::UploadVmInitrd(2)),
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
    fn unknown_method_is_405_on_a_known_path_and_501_elsewhere() {
        assert_eq!(
            route(Method::Other, "/v1/health"),
            Err(ApiError::MethodNotAllowed(Methods::EMPTY.with(Method::Get)))
        );
        assert_eq!(
            route(Method::Other, "/nope"),
            Err(ApiError::MethodNotImplemented)
        );
    }

    #[test]
    fn body_kinds() {
        assert_eq!(body_kind(Method::Put, "/v1/vms/3/image"), BodyKind::Upload);
        assert_eq!(body_kind(Method::Post, "/v1/vms/3/image"), BodyKind::None);
        assert_eq!(body_kind(Method::Put, "/v1/vms/x/image"), BodyKind::Upload);
        assert_eq!(body_kind(Method::Post, "/v1/vms"), BodyKind::Json);
        assert_eq!(
            body_kind(Method::Post, "/v1/vms/3/console"),
            BodyKind::Input
        );
        assert_eq!(body_kind(Method::Get, "/v1/vms/3/console"), BodyKind::None);
        assert_eq!(body_kind(Method::Get, "/nope"), BodyKind::None);
    }

    #[test]
    fn table_is_consistent() {
        for op in Op::ALL {
            assert_eq!(ROUTES.iter().filter(|r| r.op == op).count(), 1, "{op:?}");
            assert_eq!(route_of(op).op, op);
        }
        assert_eq!(ROUTES.len(), Op::ALL.len());
        for r in ROUTES {
            let path = r.pattern.replace(ID, "5");
            let c = route(r.method, &path).unwrap();
            assert_eq!(c.op(), r.op, "{r:?}");
        }
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
