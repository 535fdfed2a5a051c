//! `Fleet`: `n` Orca replicas (separate `orca` processes on loopback ports) in front of one
//! moto, peers of each other. Each replica reads the origin through its own counting/fault
//! proxy, so a test knows which replica fetched which chunk; optionally each replica's internal
//! port is reached through a fault proxy too ([`Fleet::start_behind_peer_proxies`]), so a test
//! can make a peer stall, fail or reset the way a sick replica or network would.
//!
//! The replicas name each other's ports, so a port taken between its choice and its bind (by
//! another test's process) restarts the whole fleet on new ports, at most
//! [`super::BIND_ATTEMPTS`] times. Every process is stopped by pid when the fleet drops.

use std::path::Path;

use ::orca::chunk::ChunkId;
use ::orca::cluster::rendezvous;

use super::{
    create_bucket, http_get, put_object, sha256_hex, FaultProxy, Moto, OrcaConfig, OrcaPorts,
    OrcaProcess,
};

/// What [`Fleet::start`]'s `configure` is told about the replica it configures.
pub struct Member<'a> {
    /// The replica's index in the fleet.
    pub index: usize,
    /// Its ports.
    pub ports: OrcaPorts,
    /// Every replica's internal address as the peer lists name it (this one's at `index`).
    pub addrs: &'a [String],
    /// Its origin endpoint (its own proxy in front of moto).
    pub origin: String,
    /// moto's endpoint (e.g. for a shared `s3` cache store in a bucket of the same moto).
    pub moto: String,
    /// A directory that lives as long as the fleet (e.g. for local tiers).
    pub dir: &'a Path,
}

impl Member<'_> {
    /// The test defaults, reading its origin proxy, on its ports.
    pub fn config(&self) -> OrcaConfig {
        OrcaConfig::new(&self.origin).ports(self.ports)
    }

    /// A `cluster:` section: the peer list `peers` (quoted), `self` this replica's address,
    /// then the `cluster:` lines `more` (indented by two spaces, each ending in a newline).
    pub fn cluster_yaml(&self, peers: &[String], more: &str) -> String {
        let quoted: Vec<String> = peers.iter().map(|a| format!("\"{a}\"")).collect();
        format!(
            "cluster:\n  peers: [{}]\n  self: \"{}\"\n{more}",
            quoted.join(", "),
            self.addrs[self.index]
        )
    }

    /// [`Member::cluster_yaml`] with every replica as a peer.
    pub fn everyone(&self, more: &str) -> String {
        self.cluster_yaml(self.addrs, more)
    }
}

/// A fleet of replicas in front of one moto. See the module docs.
pub struct Fleet {
    // Field order: the replicas stop first, then the proxies, then moto and the directory.
    /// The replicas.
    pub replicas: Vec<OrcaProcess>,
    /// With [`Fleet::start_behind_peer_proxies`], one per replica in front of its internal port
    /// (the peer lists name these); otherwise empty.
    pub peer_proxies: Vec<FaultProxy>,
    /// One per replica, in front of the origin.
    pub proxies: Vec<FaultProxy>,
    /// Each replica's internal address as the peer lists name it.
    pub addrs: Vec<String>,
    /// The origin.
    pub moto: Moto,
    /// The bucket objects are put in (the first one created).
    pub bucket: String,
    /// Lives as long as the fleet.
    pub dir: tempfile::TempDir,
}

impl Fleet {
    /// Starts moto with `buckets` (the first is the fleet's [`Fleet::bucket`]), a proxy per
    /// replica in front of it, and `n` replicas configured by `configure` (start from
    /// [`Member::config`]; peers come from [`Member::cluster_yaml`]).
    pub async fn start(
        n: usize,
        buckets: &[&str],
        configure: impl Fn(&Member) -> OrcaConfig,
    ) -> Fleet {
        Self::start_inner(Moto::start(), n, buckets, false, configure).await
    }

    /// As [`Fleet::start`] on a moto the caller started (e.g. to put a proxy in front of it
    /// for a shared store before the replicas are configured).
    pub async fn start_on(
        moto: Moto,
        n: usize,
        buckets: &[&str],
        configure: impl Fn(&Member) -> OrcaConfig,
    ) -> Fleet {
        Self::start_inner(moto, n, buckets, false, configure).await
    }

    /// As [`Fleet::start`], with each replica's internal port behind a [`FaultProxy`] of its
    /// own: the peer lists (and `self`) name the proxies, so every peer fill to replica `i`
    /// passes `peer_proxies[i]`.
    pub async fn start_behind_peer_proxies(
        n: usize,
        buckets: &[&str],
        configure: impl Fn(&Member) -> OrcaConfig,
    ) -> Fleet {
        Self::start_inner(Moto::start(), n, buckets, true, configure).await
    }

    async fn start_inner(
        moto: Moto,
        n: usize,
        buckets: &[&str],
        peer_proxied: bool,
        configure: impl Fn(&Member) -> OrcaConfig,
    ) -> Fleet {
        for bucket in buckets {
            create_bucket(&moto.endpoint(), bucket).await;
        }
        let dir = tempfile::Builder::new()
            .prefix("orca-fleet-")
            .tempdir()
            .expect("tempdir");
        // The origin proxies bind port 0 before the replicas' ports are chosen, so none of
        // them can take a port a replica is about to bind.
        let proxies: Vec<FaultProxy> = (0..n)
            .map(|_| FaultProxy::start(&moto.endpoint()))
            .collect();
        let mut attempt = 0;
        let (replicas, peer_proxies, addrs) = loop {
            attempt += 1;
            let ports: Vec<OrcaPorts> = (0..n).map(|_| OrcaPorts::free()).collect();
            let peer_proxies: Vec<FaultProxy> = if peer_proxied {
                ports
                    .iter()
                    .map(|p| FaultProxy::start(&format!("127.0.0.1:{}", p.internal)))
                    .collect()
            } else {
                Vec::new()
            };
            let addrs: Vec<String> = if peer_proxied {
                peer_proxies.iter().map(FaultProxy::addr).collect()
            } else {
                ports
                    .iter()
                    .map(|p| format!("127.0.0.1:{}", p.internal))
                    .collect()
            };
            let mut replicas = Vec::new();
            let mut failure = None;
            for (i, p) in ports.iter().enumerate() {
                let member = Member {
                    index: i,
                    ports: *p,
                    addrs: &addrs,
                    origin: proxies[i].endpoint(),
                    moto: moto.endpoint(),
                    dir: dir.path(),
                };
                match OrcaProcess::try_start(configure(&member)) {
                    Ok(replica) => replicas.push(replica),
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
            match failure {
                None => break (replicas, peer_proxies, addrs),
                Some(e) if e.address_in_use && attempt < super::BIND_ATTEMPTS => drop(replicas),
                Some(e) => panic!("{}", e.message),
            }
        };
        Fleet {
            replicas,
            peer_proxies,
            proxies,
            addrs,
            moto,
            bucket: buckets[0].to_string(),
            dir,
        }
    }

    /// Uploads `data` as `key` of the fleet's bucket, straight to moto; the ETag unquoted.
    pub async fn put(&self, key: &str, data: &[u8]) -> String {
        let etag = put_object(&self.moto.endpoint(), &self.bucket, key, data.to_vec()).await;
        etag.trim_matches('"').to_string()
    }

    /// GETs `key` whole through replica `replica` and asserts the answer is `data`.
    pub async fn get_exact(&self, replica: usize, key: &str, data: &[u8]) {
        let orca = &self.replicas[replica];
        let r = http_get(&orca.object_url(&self.bucket, key), None)
            .await
            .unwrap_or_else(|e| panic!("GET {key} via {replica}: {e}\n{}", orca.log_tail()));
        assert_eq!(
            r.status,
            200,
            "GET {key} via {replica}\n{}",
            orca.log_tail()
        );
        assert_eq!(
            sha256_hex(&r.body),
            sha256_hex(data),
            "GET {key} via {replica}"
        );
    }

    /// Ranged GETs (chunk fetches) that reached the origin, all replicas together.
    pub fn origin_gets(&self) -> usize {
        self.proxies
            .iter()
            .map(|p| p.counts().gets_with_range)
            .sum()
    }

    /// The chunk indices each replica fetched from the origin (from its proxy's log), for
    /// `chunk`-byte chunks. Panics on a ranged request whose Range does not parse.
    pub fn fetched_by(&self, chunk: u64) -> Vec<Vec<u64>> {
        self.proxies
            .iter()
            .map(|p| {
                p.counts()
                    .log
                    .iter()
                    .filter_map(|r| r.range.as_deref())
                    .map(|range| {
                        range
                            .strip_prefix("bytes=")
                            .and_then(|r| r.split('-').next()?.parse::<u64>().ok())
                            .unwrap_or_else(|| panic!("an origin GET with Range {range:?}"))
                    })
                    .map(|start| start / chunk)
                    .collect()
            })
            .collect()
    }

    /// The index of the replica that coordinates `id` when every replica is a peer.
    pub fn coordinator(&self, id: &ChunkId) -> usize {
        let mut peers = self.addrs.clone();
        peers.sort();
        let chosen = rendezvous::choose(&peers, id).expect("a peer set");
        self.addrs
            .iter()
            .position(|a| a == chosen)
            .expect("the coordinator is a replica")
    }
}

/// The file of chunk `id` in an `fs` store (or local tier) rooted at `root`.
pub fn fs_chunk_path(root: &Path, id: &ChunkId) -> std::path::PathBuf {
    let hex = id.object_hex();
    root.join("v1")
        .join(&hex[0..2])
        .join(&hex[2..4])
        .join(id.name())
}
