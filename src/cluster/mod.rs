//! The cluster: which replica coordinates each chunk, and how to reach it.
//!
//! Every replica sees a peer set (itself included) from a static list or from DNS discovery of
//! a Kubernetes headless Service ([`membership`]). For each chunk the coordinator is chosen by
//! [`rendezvous`] from the chunk's identity, the same identity that names it in the store. On a
//! miss the edge asks the coordinator's fill service; the coordinator fetches the chunk from the
//! origin once, however many replicas ask. A peer that refuses connections is skipped for a
//! short back-off and the chunk is filled locally: clients still get their bytes.

pub mod membership;
pub mod rendezvous;

use crate::chunk::ChunkId;
use crate::edge::fill_client::FillClient;
use crate::metrics::CLUSTER_PEERS;
use crate::origin::http::Resolver;
use async_trait::async_trait;
use membership::Membership;
use parking_lot::{Mutex, RwLock};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a peer that refused a connection is skipped.
pub const PEER_DOWN_BACKOFF: Duration = Duration::from_secs(5);

/// Header carrying the shared secret on peer fill requests.
pub const SECRET_HEADER: &str = "x-orca-peer-secret";

/// Where the peer set comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerSource {
    /// No peers: this replica alone.
    Alone,
    /// A fixed list (`cluster.peers`).
    Static(Vec<String>),
    /// DNS discovery: every address of `name`, at `port`, every `refresh`.
    Dns {
        /// The headless Service's name.
        name: String,
        /// The fill port of every peer.
        port: u16,
        /// How often to resolve again.
        refresh: Duration,
    },
}

enum Kind {
    Dns,
    Other,
}

/// The cluster as this replica sees it.
pub struct Cluster {
    self_addr: String,
    source: PeerSource,
    membership: Mutex<Membership>,
    /// The current set, sorted, read on every miss (a cheap `Arc` clone).
    peers: RwLock<Arc<Vec<String>>>,
    clients: Mutex<HashMap<String, Arc<FillClient>>>,
    down: Mutex<HashMap<String, Instant>>,
    secret: Option<String>,
    read_timeout: Duration,
    resolver: Resolver,
    /// Discovery has run at least once (static lists and "alone" start with a set). A failed
    /// first lookup counts: it yields a set too (this replica alone), and a new fleet's headless
    /// Service answers NXDOMAIN until some replica is ready, so waiting for a success would
    /// keep every replica unready forever.
    discovered: std::sync::atomic::AtomicBool,
}

impl Cluster {
    /// A cluster view. `self_addr` is this replica's fill address as its peers see it.
    pub fn new(
        self_addr: &str,
        source: PeerSource,
        secret: Option<String>,
        read_timeout: Duration,
    ) -> Self {
        let source_kind = if matches!(source, PeerSource::Dns { .. }) {
            Kind::Dns
        } else {
            Kind::Other
        };
        let mut membership = Membership::alone(self_addr);
        if let PeerSource::Static(list) = &source {
            membership.refresh::<()>(Ok(list.clone()));
        }
        let peers = Arc::new(membership.peers().to_vec());
        CLUSTER_PEERS.set(peers.len() as i64);
        Self {
            self_addr: self_addr.to_string(),
            source,
            membership: Mutex::new(membership),
            peers: RwLock::new(peers),
            clients: Mutex::new(HashMap::new()),
            down: Mutex::new(HashMap::new()),
            secret,
            read_timeout,
            resolver: Resolver::default(),
            discovered: std::sync::atomic::AtomicBool::new(!matches!(source_kind, Kind::Dns)),
        }
    }

    /// Whether discovery has produced a peer set yet (`/readyz` waits for the first one).
    pub fn has_peer_set(&self) -> bool {
        self.discovered.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The current peer set.
    pub fn peers(&self) -> Arc<Vec<String>> {
        self.peers.read().clone()
    }

    /// The shared secret peers must present, if one is configured.
    pub fn secret(&self) -> Option<&str> {
        self.secret.as_deref()
    }

    /// The chunk's coordinator, or `None` when it is this replica.
    pub fn coordinator(&self, id: &ChunkId) -> Option<String> {
        let peers = self.peers();
        match rendezvous::choose(&peers, id) {
            Some(p) if p != self.self_addr => Some(p.to_string()),
            _ => None,
        }
    }

    /// Whether `peer` refused a connection within the back-off.
    pub fn is_down(&self, peer: &str) -> bool {
        let mut down = self.down.lock();
        match down.get(peer) {
            Some(until) if Instant::now() < *until => true,
            Some(_) => {
                down.remove(peer);
                false
            }
            None => false,
        }
    }

    /// Skips `peer` for [`PEER_DOWN_BACKOFF`] and forgets its connections.
    pub fn mark_down(&self, peer: &str) {
        tracing::warn!(peer, "peer unreachable; filling locally for a while");
        self.down
            .lock()
            .insert(peer.to_string(), Instant::now() + PEER_DOWN_BACKOFF);
        self.clients.lock().remove(peer);
    }

    /// The fill client of `peer` (its name resolved asynchronously, once).
    pub async fn client(&self, peer: &str) -> Result<Arc<FillClient>, String> {
        if let Some(c) = self.clients.lock().get(peer) {
            return Ok(c.clone());
        }
        let (host, port) = peer
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h.trim_matches(['[', ']']), p.parse::<u16>().ok()?)))
            .ok_or_else(|| format!("peer {peer:?} is not host:port"))?;
        let addr = self
            .resolver
            .resolve(host, port)
            .await
            .map_err(|e| format!("cannot resolve peer {peer}: {e}"))?;
        let client = Arc::new(FillClient::remote(
            addr,
            self.read_timeout,
            self.secret.clone(),
        ));
        self.clients
            .lock()
            .entry(peer.to_string())
            .or_insert(client.clone());
        Ok(client)
    }

    /// Applies one discovery result to the peer set.
    pub fn apply<E: std::fmt::Display>(&self, outcome: Result<Vec<String>, E>) {
        self.discovered
            .store(true, std::sync::atomic::Ordering::Relaxed);
        match &outcome {
            Err(e) => tracing::warn!(error = %e, "peer discovery failed"),
            Ok(found) => {
                if !found.is_empty() && !found.contains(&self.self_addr) {
                    // Peers would see this replica under another name: it would count itself
                    // twice and answer 409 to much of its share.
                    tracing::warn!(
                        self_addr = %self.self_addr,
                        found = ?found,
                        "discovery does not list this replica as cluster.self (ORCA_SELF) spells it"
                    );
                }
            }
        }
        let (change, peers, failures) = {
            let mut m = self.membership.lock();
            let change = m.refresh(outcome);
            (change, m.peers().to_vec(), m.failures())
        };
        if !change.is_empty() {
            tracing::info!(
                added = ?change.added,
                removed = ?change.removed,
                peers = peers.len(),
                failures,
                "peer set changed"
            );
            self.clients.lock().retain(|p, _| peers.contains(p));
        }
        CLUSTER_PEERS.set(peers.len() as i64);
        *self.peers.write() = Arc::new(peers);
    }

    /// The DNS refresher, when the peer set comes from DNS.
    pub fn dns_refresher(self: &Arc<Self>) -> Option<DnsRefresher> {
        match &self.source {
            PeerSource::Dns { .. } => Some(DnsRefresher {
                cluster: self.clone(),
            }),
            _ => None,
        }
    }
}

/// Resolves the headless Service on an interval (a Pingora background service).
pub struct DnsRefresher {
    cluster: Arc<Cluster>,
}

impl DnsRefresher {
    async fn resolve(name: &str, port: u16) -> std::io::Result<Vec<String>> {
        let mut peers: Vec<String> = tokio::net::lookup_host((name, port))
            .await?
            .map(|a| a.to_string())
            .collect();
        peers.sort();
        peers.dedup();
        Ok(peers)
    }
}

#[async_trait]
impl BackgroundService for DnsRefresher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let PeerSource::Dns {
            name,
            port,
            refresh,
        } = self.cluster.source.clone()
        else {
            return;
        };
        loop {
            let outcome = tokio::time::timeout(
                refresh.max(Duration::from_secs(1)),
                Self::resolve(&name, port),
            )
            .await
            .unwrap_or_else(|_| Err(std::io::Error::other("DNS lookup timed out")));
            self.cluster.apply(outcome);
            tokio::select! {
                _ = tokio::time::sleep(refresh) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_clusters_are_ready_once_discovery_has_run() {
        let dns = PeerSource::Dns {
            name: "orca-peers".into(),
            port: 8444,
            refresh: Duration::from_secs(5),
        };
        let c = Cluster::new("10.0.0.1:8444", dns, None, Duration::from_secs(1));
        assert!(!c.has_peer_set());
        // NXDOMAIN while no replica is ready yet: alone, and ready (or no replica ever is).
        c.apply::<String>(Err("no answer".into()));
        assert!(c.has_peer_set());
        assert_eq!(c.peers().as_slice(), ["10.0.0.1:8444".to_string()]);
        c.apply::<String>(Ok(vec!["10.0.0.1:8444".into(), "10.0.0.2:8444".into()]));
        assert!(c.has_peer_set());
        assert_eq!(c.peers().len(), 2);
        let stat = Cluster::new(
            "a:1",
            PeerSource::Static(vec!["a:1".into(), "b:1".into()]),
            None,
            Duration::from_secs(1),
        );
        assert!(stat.has_peer_set());
        assert_eq!(stat.peers().len(), 2);
    }
}
