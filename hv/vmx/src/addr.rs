//! Address newtypes: the core's, re-exported (one copy for the core and both backends; see
//! `hv::mem::addr`).
#![forbid(unsafe_code)]

pub use hv::mem::{GuestPhys, HostPhys};
