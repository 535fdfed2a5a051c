//! The fill protocol, in one place: the request on the wire ([`protocol`]), the service that
//! answers it ([`service`], a Pingora proxy with pingora-cache over the origin) and the client
//! the edge asks it with ([`client`], with one client per peer and the peers' back-off).
//!
//! One fill request is one whole chunk. A replica's edge asks the chunk's coordinator (chosen
//! by [`crate::cluster`]) or, when that is itself or the coordinator cannot help, its own fill
//! service in-process. The service's hooks, in the order Pingora calls them, are documented on
//! [`service`].

pub mod client;
pub mod protocol;
pub mod purge;
pub mod service;
pub mod subrange;

pub use client::{FillBody, FillClients, FillError, PeerTls, PieceSink};
pub use service::FillService;
