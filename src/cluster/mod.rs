//! The cluster: the peer set and which replica coordinates each chunk.
//!
//! Every replica sees a peer set (itself included) from a static list or from DNS discovery of
//! a Kubernetes headless Service ([`membership`]). For each chunk the coordinator is chosen by
//! [`rendezvous`] from the chunk's identity, the same identity that names it in the store. On a
//! miss the edge asks the coordinator's fill service; the coordinator fetches the chunk from the
//! origin once, however many replicas ask. How a peer is reached (the fill protocol, its
//! clients and the back-off for peers that refuse connections) is [`crate::fill`]'s business.

pub(crate) mod membership;
pub mod rendezvous;

use crate::chunk::ChunkId;
use crate::metrics::CLUSTER_PEERS;
use async_trait::async_trait;
use membership::Membership;
use parking_lot::{Mutex, RwLock};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

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
    /// Bumped whenever the peer set changes, so holders of per-peer state can prune it.
    generation: AtomicU64,
    /// Discovery has run at least once (static lists and "alone" start with a set). A failed
    /// first lookup counts: it yields a set too (this replica alone), and a new fleet's headless
    /// Service answers NXDOMAIN until some replica is ready, so waiting for a success would
    /// keep every replica unready forever.
    discovered: AtomicBool,
}

impl Cluster {
    /// A cluster view. `self_addr` is this replica's fill address as its peers see it.
    pub fn new(self_addr: &str, source: PeerSource) -> Self {
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
            generation: AtomicU64::new(0),
            discovered: AtomicBool::new(!matches!(source_kind, Kind::Dns)),
        }
    }

    /// Whether discovery has produced a peer set yet (`/readyz` waits for the first one).
    pub fn has_peer_set(&self) -> bool {
        self.discovered.load(Ordering::Relaxed)
    }

    /// A counter bumped on every change of the peer set.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// This replica's fill address as its peers see it (its name in the peer set).
    pub fn self_addr(&self) -> &str {
        &self.self_addr
    }

    /// The current peer set.
    pub fn peers(&self) -> Arc<Vec<String>> {
        self.peers.read().clone()
    }

    /// The chunk's coordinator, or `None` when it is this replica.
    pub fn coordinator(&self, id: &ChunkId) -> Option<String> {
        let peers = self.peers();
        match rendezvous::choose(&peers, id) {
            Some(p) if p != self.self_addr => Some(p.to_string()),
            _ => None,
        }
    }

    /// Applies one discovery result to the peer set.
    pub fn apply<E: std::fmt::Display>(&self, outcome: Result<Vec<String>, E>) {
        self.discovered.store(true, Ordering::Relaxed);
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
        }
        CLUSTER_PEERS.set(peers.len() as i64);
        *self.peers.write() = Arc::new(peers);
        if !change.is_empty() {
            self.generation.fetch_add(1, Ordering::Release);
        }
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
        let c = Cluster::new("10.0.0.1:8444", dns);
        assert!(!c.has_peer_set());
        // NXDOMAIN while no replica is ready yet: alone, and ready (or no replica ever is).
        c.apply::<String>(Err("no answer".into()));
        assert!(c.has_peer_set());
        assert_eq!(c.peers().as_slice(), ["10.0.0.1:8444".to_string()]);
        c.apply::<String>(Ok(vec!["10.0.0.1:8444".into(), "10.0.0.2:8444".into()]));
        assert!(c.has_peer_set());
        assert_eq!(c.peers().len(), 2);
        assert_eq!(
            c.generation(),
            1,
            "one change of the set, one new generation"
        );
        c.apply::<String>(Ok(vec!["10.0.0.2:8444".into(), "10.0.0.1:8444".into()]));
        assert_eq!(c.generation(), 1, "the same set is no change");
        let stat = Cluster::new("a:1", PeerSource::Static(vec!["a:1".into(), "b:1".into()]));
        assert!(stat.has_peer_set());
        assert_eq!(stat.peers().len(), 2);
    }
}
