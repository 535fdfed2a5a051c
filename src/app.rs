//! Wiring: builds the one Pingora `Server` with the edge, fill and ops services over the
//! shared [`Orca`] state.
//!
//! Nothing here spawns a task or opens a connection: Pingora may fork (`-d`) when it runs, so
//! connectors and tasks are created lazily inside its runtimes.

use crate::cachectl::CacheCtl;
use crate::config::Config;
use crate::edge::auth::EdgeAuth;
use crate::edge::limit::ConnectionLimit;
use crate::edge::EdgeService;
use crate::fill::{FillClients, FillService, PeerTls};
use crate::metadata::HealthProbe;
use crate::net::tls::{load_ca, CertReloader, CertResolver};
use crate::ops::OpsService;
use crate::state::Orca;
use anyhow::Context;
use pingora::apps::http_app::HttpServer;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::server::configuration::Opt;
use pingora::server::Server;
use pingora::services::background::background_service;
use pingora::services::listening::Service;
use pingora_proxy::{http_proxy, http_proxy_service_with_name};
use std::sync::Arc;

/// Cleans up after `orca -t`, which builds the server (running the cache store's start-up
/// checks) and exits without running it: removes the `fs` store's temp directory.
pub fn after_check() {
    crate::cachestore::fs::remove_own_temp_dirs();
}

/// The edge's per-connection write buffer.
const EDGE_WRITE_BUFFER: usize = 64 * 1024;

/// Builds the Pingora server with the edge, fill and ops services.
pub fn build_server(opt: Opt, config: Config) -> anyhow::Result<Server> {
    crate::metrics::init();
    let listen = config.listen.clone();
    let orca = Orca::build(config)?;
    let mut server = Server::new(Some(opt)).context("pingora server configuration (-c)")?;
    server.bootstrap();
    let conf = server.configuration.clone();

    // The edge reaches this replica's fill service in-process, through its own instance.
    let local_fill = Arc::new(http_proxy(&conf, FillService::for_local_edge(orca.clone())));
    let fills = FillClients::new(
        local_fill,
        orca.cluster.clone(),
        orca.fill_read_timeout(),
        orca.peer_secret.clone(),
    );
    let peer_tls = match &orca.config.cluster.peer_ca {
        Some(ca) => Some(PeerTls {
            ca: load_ca(ca).context("cluster.peer_ca")?,
            server_name: orca.config.cluster.peer_server_name.clone(),
        }),
        None => None,
    };
    let fills = fills.with_peer_tls(peer_tls);
    let edge_tls = match &listen.edge_tls {
        Some(files) => Some(CertResolver::new("edge", files.clone()).context("listen.edge_tls")?),
        None => None,
    };
    let internal_tls = match &listen.internal_tls {
        Some(files) => {
            Some(CertResolver::new("internal", files.clone()).context("listen.internal_tls")?)
        }
        None => None,
    };
    // Warm jobs fill through the same clients (their own set: their own peers' back-off).
    let cachectl = Arc::new(CacheCtl::new(orca.clone(), fills.sibling())?);
    let edge_auth = Arc::new(EdgeAuth::new(&orca.config.edge.auth));
    // At most limits.max_connections client connections (see edge::limit).
    let mut edge = Service::new(
        "edge".to_string(),
        ConnectionLimit::new(
            EdgeService::new(orca.clone(), fills, edge_auth.clone()),
            orca.config.limits.max_connections,
        ),
    );
    // A write buffer that holds a response header and a small body, so a small object goes
    // out in one write instead of two (Pingora's default buffers 1460 bytes; a body piece
    // larger than the buffer still goes straight to the socket, uncopied). No read buffer:
    // Pingora's default is 64 KiB, zeroed at accept, so every open connection, idle or not,
    // held 64 KiB of resident memory (10,000 idle connections: 430 MiB). Clients send only
    // request headers here, which Pingora reads into its own growing header buffer anyway.
    let mut edge_listener = ListenerConfig::tcp(listen.edge.as_str()).l4_buffer(L4BufferSettings {
        read: Some(0),
        write: Some(EDGE_WRITE_BUFFER),
    });
    if let Some(resolver) = &edge_tls {
        edge_listener = edge_listener.tls(resolver.settings());
    }
    edge.add_listener(edge_listener);
    let mut fill =
        http_proxy_service_with_name(&conf, FillService::for_peers(orca.clone()), "fill");
    let dns = orca.cluster.dns_refresher();
    let evictor = orca.evictor.lock().take();
    match &internal_tls {
        Some(resolver) => fill
            .add_listener(ListenerConfig::tcp(listen.internal.as_str()).tls(resolver.settings())),
        None => fill.add_tcp(&listen.internal),
    }
    // One SIGHUP handler reloads the certificates and the edge's client keys.
    let cert_reloader = CertReloader::new(edge_tls.into_iter().chain(internal_tls).collect());
    let auth_reloader = edge_auth.reloader().with_certificates(cert_reloader);
    let (health, origin) = (orca.health.clone(), orca.origin.clone());
    let mut ops = Service::new(
        "ops".to_string(),
        HttpServer::new_app(OpsService::new(orca, edge_auth, cachectl)),
    );
    ops.add_tcp(&listen.ops);
    ops.threads = Some(1);

    server.add_service(edge);
    server.add_service(fill);
    server.add_service(ops);
    if let Some(dns) = dns {
        server.add_service(background_service("peer discovery", dns));
    }
    if let Some(evictor) = evictor {
        server.add_service(background_service("fs cache eviction", evictor));
    }
    server.add_service(background_service("SIGHUP handler", auth_reloader));
    server.add_service(background_service(
        "origin credentials probe",
        HealthProbe::new(health, origin),
    ));
    Ok(server)
}
