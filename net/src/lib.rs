//! The Hermitage control endpoint, as a protocol over bytes: HTTP parse -> route -> respond.
//!
//! This crate decides everything about a request and touches nothing: no socket, no hardware,
//! no clock. The kernel's transport (smoltcp) moves bytes in and out; the hypervisor is behind
//! the [`Backend`] trait. So the whole endpoint runs under `cargo test` on Linux, byte by byte
//! and under random input (STYLE.md point 9).
//!
//! # How bytes flow
//!
//! ```text
//!  socket bytes --feed--> http::Conn --next_request--> http::Request
//!                          (bounded buffer,             | method, path, query,
//!                           httparse, limits)           | authorization, content-type, body
//!                                                       v
//!                          auth: bearer token, constant time (or 401)
//!                                                       v
//!                          router::route(method, path) -> router::Command
//!                                                       |   (or 404 / 405 + Allow / 400 / 501)
//!                          Content-Type vs router::BodyKind (415); body::parse_* (400, naming
//!                                                       |   the field) into hv's VmConfig / PmuConfig
//!                                                       v
//!                          api::Backend (the hypervisor) -> api::Health / CpuInfo / VmInfo / HostInfo
//!                                                       |   (or api::CpuError / VmError -> 4xx / 5xx)
//!                                                       v
//!  socket <--send-- Vec<u8> <-- server: status line, headers, JSON (json), console bytes, or
//!                               Prometheus text (metrics)
//! ```
//!
//! [`Endpoint::serve`] runs the middle for every request buffered in a connection. A transport
//! needs only this loop (`net/examples/serve.rs` is a complete one over std TCP):
//!
//! ```
//! use net::{Endpoint, Flow, Settings};
//! # use net::api::*;
//! # struct Hv;
//! # impl Backend for Hv {
//! #     fn health(&self) -> Health<'_> { Health::new(VERSION, 1, Virt::Svm) }
//! #     fn cpus(&self, each: &mut dyn FnMut(&CpuInfo<'_>)) { each(&CpuInfo::new(0, 0)) }
//! #     fn cpu(&self, id: u32) -> Result<CpuInfo<'_>, CpuError> { Err(CpuError::NotFound) }
//! #     fn cpu_online(&mut self, id: u32) -> Result<CpuInfo<'_>, CpuError> { Err(CpuError::NotFound) }
//! #     fn cpu_offline(&mut self, id: u32) -> Result<CpuInfo<'_>, CpuError> { Err(CpuError::NotFound) }
//! #     fn reboot(&mut self) -> Result<(), CpuError> { Ok(()) }
//! # }
//! # let mut hv = Hv;
//! // One per transport; Settings::from_boot_config(&boot_config) reads api_token= and http_*=.
//! let mut ep = Endpoint::new(Settings::default());
//! let mut conn = ep.conn(); // one per TCP connection; reuse with reset()
//! let mut out = Vec::new();
//!
//! // Whenever the socket has data (smoltcp: socket.recv(|d| { let n = conn.feed(d); (n, ()) })):
//! let received = b"GET /v1/health HTTP/1.1\r\nHost: hv\r\n\r\n";
//! let taken = conn.feed(received); // may take fewer when full; feed the rest after serve()
//! assert_eq!(taken, received.len());
//! let flow = ep.serve(&mut conn, &mut hv, &mut out);
//!
//! // Send `out`, clear it; if flow == Flow::Close, close once it is sent.
//! assert!(out.starts_with(b"HTTP/1.1 200 OK\r\n"));
//! assert_eq!(flow, Flow::Continue);
//!
//! // More open connections than ep.settings().max_connections: answer the new one with
//! // ep.reject(&mut out) (503), send, close. No traffic for ep.settings().idle_timeout_ms:
//! // ep.timeout(&mut out) (408) unless a response is half sent, send, close.
//! ```
//!
//! # Modules
//!
//! * [`http`]: the connection state machine ([`Conn`]), [`Limits`], [`Request`], statuses.
//! * [`router`]: the route table [`router::ROUTES`] and [`router::Command`].
//! * [`api`]: reply types ([`api::Health`], [`api::CpuInfo`], [`api::VmInfo`],
//!   [`api::HostInfo`]), [`api::CpuError`], [`api::VmError`], [`Backend`].
//! * [`body`]: JSON request bodies into hv's `VmConfig` and `PmuConfig`, errors naming the field.
//! * [`json`]: the VM, PMU, stats and host documents, over hv's own types and names.
//! * [`metrics`]: the Prometheus exposition and the HTTP counters.
//! * [`auth`]: the optional bearer token.
//! * [`error`]: [`ApiError`] and the one JSON error shape
//!   `{"error":{"code":"not_found","message":"no route for GET /v1/foo"}}`.
//! * [`server`]: [`Endpoint`], [`Settings`], [`serve`], [`handle`] and the response writers.
//!
//! The API itself is described in `net/openapi.yaml` (checked against [`router::ROUTES`] and
//! the statuses the code produces by `tests/openapi.rs`) and, for people, in the README's API section.
//!
//! # Bounds
//!
//! A [`Conn`] allocates its input buffer when its first bytes arrive (head + body limit, 72 KiB
//! by default) and grows it only for an accepted upload (up to [`Limits::max_upload_bytes`],
//! 16 MiB by default), giving the memory back once it is answered; parsing allocates nothing.
//! An upload the backend would refuse ([`Backend::vm_upload_allowed`]) is answered from its
//! head, before its body is buffered. Responses go into the
//! caller's `Vec<u8>`, at most [`Limits::max_response_bytes`] each, and [`serve`] stops
//! answering pipelined requests while that much output is waiting. The number of connections
//! and their idle time are bounded by the transport, with the values in [`Settings`].
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;

pub mod api;
pub mod auth;
pub mod body;
pub mod error;
pub mod http;
pub mod json;
pub mod metrics;
pub mod router;
pub mod server;

pub use api::Backend;
pub use error::ApiError;
pub use http::{Conn, Limits, Next, Request};
pub use server::{ConsoleWait, Endpoint, Flow, Settings, handle, serve};
