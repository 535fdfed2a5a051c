//! A fleet of Orca replicas (separate `orca` processes on loopback ports) in front of one moto:
//! every chunk is fetched from the origin by its coordinator alone, however many clients ask
//! however many replicas; disagreements and dead peers cost no correct answer.
//!
//! Each replica reads the origin through its own counting proxy, so the test knows which
//! replica fetched which chunk.

#![allow(clippy::unwrap_used)]

mod common;

use ::orca::chunk::ChunkId;
use ::orca::cluster::rendezvous;
use common::*;
use std::collections::HashMap;

const MIB: usize = 1 << 20;
const BUCKET: &str = "fleet";

/// `n` replicas; `peers_of(i, all)` gives replica i's static peer list.
/// With `shared_store`, the replicas share an S3 cache store (a bucket of the same moto);
/// otherwise each has its own fs store.
async fn start(
    n: usize,
    peers_of: impl Fn(usize, &[String]) -> Vec<String>,
    extra: &str,
    shared_store: bool,
) -> Fleet {
    start_with_chunks(n, peers_of, extra, shared_store, "1MiB").await
}

async fn start_with_chunks(
    n: usize,
    peers_of: impl Fn(usize, &[String]) -> Vec<String>,
    extra: &str,
    shared_store: bool,
    chunk_size: &str,
) -> Fleet {
    let buckets: &[&str] = if shared_store {
        &[BUCKET, "orca-cache"]
    } else {
        &[BUCKET]
    };
    Fleet::start(n, buckets, |m| {
        let store = if shared_store {
            format!(
                "cachestore:\n  driver: s3\n  s3:\n    endpoint: {}\n    bucket: orca-cache\n    path_style: true\n",
                m.moto
            )
        } else {
            String::new()
        };
        m.config()
            .chunk_size(chunk_size)
            .env("ORCA_TEST_PEER_SECRET", "fleet-secret")
            .env("ORCA_CACHESTORE_ACCESS_KEY_ID", "test")
            .env("ORCA_CACHESTORE_SECRET_ACCESS_KEY", "test")
            .extra_yaml(&format!(
                "{}{extra}{store}",
                m.cluster_yaml(&peers_of(m.index, m.addrs), "")
            ))
    })
    .await
}

fn everyone(_: usize, all: &[String]) -> Vec<String> {
    all.to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_chunk_is_fetched_by_its_coordinator_whichever_replica_the_client_entered() {
    let fleet = start(3, everyone, "", true).await;
    let data = deterministic_bytes(24, 24 * MIB);
    let etag = fleet.put("obj", &data).await;
    // Enter through each replica in turn. Before the later passes, let the first pass's commits
    // land in the shared store (they run in the background), so those passes read it.
    for (i, r) in fleet.replicas.iter().enumerate() {
        let got = http_get(&r.object_url(BUCKET, "obj"), None).await.unwrap();
        assert_eq!(got.status, 200);
        assert_eq!(
            sha256_hex(&got.body),
            sha256_hex(&data),
            "through replica {i}"
        );
        if i == 0 {
            let landed = poll_until(std::time::Duration::from_secs(30), || {
                let n: f64 = fleet
                    .replicas
                    .iter()
                    .map(|r| r.metric_value("orca_cachestore_commits_total{result=\"committed\"}"))
                    .sum();
                (n >= 24.0).then_some(n)
            });
            assert_eq!(landed, Some(24.0), "commits did not land");
        }
    }
    assert_eq!(fleet.origin_gets(), 24, "each chunk once across the fleet");
    let peers = {
        let mut p = fleet.addrs.clone();
        p.sort();
        p
    };
    for (i, chunks) in fleet.fetched_by(MIB as u64).iter().enumerate() {
        for index in chunks {
            let id = ChunkId::from_fields("test-origin", BUCKET, "obj", &etag, MIB as u64, *index);
            assert_eq!(
                rendezvous::choose(&peers, &id),
                Some(fleet.addrs[i].as_str()),
                "chunk {index} was fetched by replica {i}, not its coordinator"
            );
        }
    }
    // Per-replica metrics agree: origin reads sum to the origin GETs. The first pass (through
    // replica 0) asked the coordinator of every chunk it does not coordinate; the later passes
    // read everything from the shared store.
    let origin: f64 = fleet
        .replicas
        .iter()
        .map(|r| r.metric_value("orca_chunk_reads_total{source=\"origin\"}"))
        .sum();
    assert_eq!(origin, 24.0);
    let not_mine = (0..24u64)
        .filter(|i| {
            let id = ChunkId::from_fields("test-origin", BUCKET, "obj", &etag, MIB as u64, *i);
            rendezvous::choose(&peers, &id) != Some(fleet.addrs[0].as_str())
        })
        .count() as f64;
    assert_eq!(
        fleet.replicas[0].metric_value("orca_peer_fills_total{result=\"ok\"}"),
        not_mine
    );
    for r in &fleet.replicas[1..] {
        assert_eq!(
            r.metric_value("orca_chunk_reads_total{source=\"cachestore\"}"),
            24.0
        );
    }
    for r in &fleet.replicas {
        assert_eq!(r.metric_value("orca_cluster_peers"), 3.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_and_36_clients_fetch_each_chunk_once() {
    let fleet = start(3, everyone, "", true).await;
    let data = deterministic_bytes(36, 24 * MIB);
    fleet.put("hot", &data).await;
    let want = sha256_hex(&data);
    let mut clients = Vec::new();
    for i in 0..36 {
        let url = fleet.replicas[i % 3].object_url(BUCKET, "hot");
        clients.push(tokio::spawn(async move { http_get(&url, None).await }));
    }
    for c in clients {
        let r = c.await.unwrap().unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(sha256_hex(&r.body), want);
    }
    assert_eq!(fleet.origin_gets(), 24);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_with_a_disagreeing_peer_list_still_serves_correctly() {
    // Replica 2 believes it is alone with replica 0; replicas 0 and 1 see all three. Requests
    // it sends to a peer that does not coordinate the chunk get 409 and are filled locally.
    let fleet = start(
        3,
        |i, all| {
            if i == 2 {
                vec![all[0].clone(), all[2].clone()]
            } else {
                all.to_vec()
            }
        },
        "",
        true,
    )
    .await;
    let data = deterministic_bytes(25, 24 * MIB);
    // Choose a key with chunks that replica 2 sends to replica 0 (its view: {0, 2}) while
    // replica 0 sees replica 1 as their coordinator (the full view): those get a certain 409.
    let all = {
        let mut p = fleet.addrs.clone();
        p.sort();
        p
    };
    let partial = {
        let mut p = vec![fleet.addrs[0].clone(), fleet.addrs[2].clone()];
        p.sort();
        p
    };
    let mut chosen = None;
    for attempt in 0..40 {
        let key = format!("split-{attempt}");
        let etag = fleet.put(&key, &data).await;
        let disputed: Vec<u64> = (0..24u64)
            .filter(|i| {
                let id = ChunkId::from_fields("test-origin", BUCKET, &key, &etag, MIB as u64, *i);
                rendezvous::choose(&partial, &id) == Some(fleet.addrs[0].as_str())
                    && rendezvous::choose(&all, &id) == Some(fleet.addrs[1].as_str())
            })
            .collect();
        if !disputed.is_empty() {
            chosen = Some((key, disputed));
            break;
        }
    }
    let (key, disputed) = chosen.expect("no key with a disputed chunk in 40 tries");
    let want = sha256_hex(&data);
    // First one client through replica 2 alone, before any commit can answer for the peers.
    let r = http_get(&fleet.replicas[2].object_url(BUCKET, &key), None)
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(sha256_hex(&r.body), want);
    let not_coord =
        fleet.replicas[2].metric_value("orca_peer_fills_total{result=\"not_coordinator\"}");
    assert_eq!(
        not_coord,
        disputed.len() as f64,
        "409s for the disputed chunks {disputed:?}"
    );
    // The fallback: replica 2 fetched each disputed chunk from the origin itself.
    let mine = &fleet.fetched_by(MIB as u64)[2];
    for index in &disputed {
        assert!(
            mine.contains(index),
            "disputed chunk {index} was not filled locally after the 409 ({mine:?})"
        );
    }
    let mut clients = Vec::new();
    for i in 0..12 {
        let url = fleet.replicas[i % 3].object_url(BUCKET, &key);
        clients.push(tokio::spawn(async move { http_get(&url, None).await }));
    }
    for c in clients {
        let r = c.await.unwrap().unwrap();
        assert_eq!(sha256_hex(&r.body), want);
    }
    let gets = fleet.origin_gets();
    assert!(
        (24..=48).contains(&gets),
        "{gets} origin GETs for 24 chunks"
    );
    let refused: f64 = fleet
        .replicas
        .iter()
        .map(|r| r.metric_value("orca_peer_requests_rejected_total{reason=\"not_coordinator\"}"))
        .sum();
    let not_coord =
        fleet.replicas[2].metric_value("orca_peer_fills_total{result=\"not_coordinator\"}");
    assert!(refused >= disputed.len() as f64, "{refused} 409s");
    assert_eq!(refused, not_coord);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_replica_mid_read_costs_only_its_own_clients() {
    let mut fleet = start(3, everyone, "", true).await;
    let data = deterministic_bytes(26, 24 * MIB);
    fleet.put("doomed", &data).await;
    let want = sha256_hex(&data);
    let mut clients = Vec::new();
    for i in 0..12 {
        // Clients of replicas 0 and 1 only; replica 2 dies while they read.
        let url = fleet.replicas[i % 2].object_url(BUCKET, "doomed");
        clients.push(tokio::spawn(async move {
            let client = http_client();
            let mut resp = client.get(&url).send().await.unwrap();
            let mut body = Vec::new();
            while let Some(piece) = resp.chunk().await.unwrap() {
                body.extend_from_slice(&piece);
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            body
        }));
    }
    // Once it has fetched chunks for its peers, the coordinator of a third of the chunks dies.
    fleet.replicas[2]
        .wait_metric_at_least(
            "orca_chunk_reads_total{source=\"origin\"}",
            1.0,
            std::time::Duration::from_secs(30),
        )
        .await;
    fleet.replicas[2].kill();
    // The kill landed mid-read: no client had its whole object yet.
    let done = clients.iter().filter(|c| c.is_finished()).count();
    assert_eq!(done, 0, "{done} clients had finished before the kill");
    for c in clients {
        let body = c.await.unwrap();
        assert_eq!(sha256_hex(&body), want);
    }
    // And the survivors' fallback ran: a peer fill to the dead replica failed and was filled
    // locally instead.
    let failed: f64 = fleet.replicas[..2]
        .iter()
        .map(|r| r.metric_value("orca_peer_fills_total{result=\"error\"}"))
        .sum();
    let logged = fleet.replicas[..2]
        .iter()
        .any(|r| r.log().contains("filling locally"));
    assert!(
        failed >= 1.0 && logged,
        "no peer fill to the dead replica failed ({failed}); logs:\n{}\n{}",
        fleet.replicas[0].log_tail(),
        fleet.replicas[1].log_tail()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_must_present_the_shared_secret() {
    let fleet = start(
        2,
        everyone,
        "  shared_secret_env: ORCA_TEST_PEER_SECRET\n",
        false,
    )
    .await;
    let data = deterministic_bytes(27, 8 * MIB);
    let etag = fleet.put("secret", &data).await;
    // The fleet itself works: both replicas carry the secret.
    let r = http_get(&fleet.replicas[0].object_url(BUCKET, "secret"), None)
        .await
        .unwrap();
    assert_eq!(sha256_hex(&r.body), sha256_hex(&data));
    assert_eq!(fleet.origin_gets(), 8);
    // A request to the internal port without it: 403, counted.
    let query = format!(
        "origin=test-origin&bucket={BUCKET}&key=secret&etag={etag}&chunk_size={MIB}&index=0&object_size={}",
        data.len()
    );
    for (i, r) in fleet.replicas.iter().enumerate() {
        let url = format!("{}/internal/fill?{query}", r.internal_url());
        let resp = http_get(&url, None).await.unwrap();
        assert_eq!(resp.status, 403, "replica {i}: {}", resp.text());
        assert!(resp.text().contains("AccessDenied"));
        assert_eq!(
            r.metric_value("orca_peer_requests_rejected_total{reason=\"auth\"}"),
            1.0
        );
        // A wrong secret, and one that only starts like the right one: refused alike.
        for wrong in ["not-the-secret", "fleet-secret-", "fleet-secre"] {
            let resp = http_request("GET", &url, &[("x-orca-peer-secret", wrong)], None)
                .await
                .unwrap();
            assert_eq!(
                resp.status,
                403,
                "replica {i}, secret {wrong:?}: {}",
                resp.text()
            );
            assert!(resp.text().contains("AccessDenied"));
        }
        assert_eq!(
            r.metric_value("orca_peer_requests_rejected_total{reason=\"auth\"}"),
            4.0
        );
        // The right secret passes the check (the answer is the chunk).
        let resp = http_request("GET", &url, &[("x-orca-peer-secret", "fleet-secret")], None)
            .await
            .unwrap();
        assert!(
            matches!(resp.status, 200 | 409),
            "replica {i}: the right secret got {}: {}",
            resp.status,
            resp.text()
        );
    }
    let mut by_replica = HashMap::new();
    for (i, chunks) in fleet.fetched_by(MIB as u64).iter().enumerate() {
        by_replica.insert(i, chunks.len());
    }
    assert_eq!(by_replica.values().sum::<usize>(), 8);
}

/// Distinct client ports of every TCP connection to or from `port` on this host that the
/// kernel still knows (established, closing, or in TIME_WAIT), from /proc/net/tcp{,6}.
fn connections_to(port: u16) -> std::collections::HashSet<u16> {
    let mut clients = std::collections::HashSet::new();
    for cols in proc_tcp_rows() {
        let (local, remote) = (proc_tcp_port(&cols[1]), proc_tcp_port(&cols[2]));
        if remote == port {
            clients.insert(local);
        } else if local == port && remote != 0 {
            clients.insert(remote);
        }
    }
    clients
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_peer_fills_reuse_pooled_connections() {
    let fleet = start_with_chunks(2, everyone, "", false, "4KiB").await;
    // 2048 chunks of 4 KiB: about half are fetched through the peer, a few at a time.
    let data = deterministic_bytes(28, 2048 * 4096);
    let etag = fleet.put("many", &data).await;
    let peer_port: u16 = fleet.addrs[1].rsplit(':').next().unwrap().parse().unwrap();
    let before = connections_to(peer_port);
    let r = http_get(&fleet.replicas[0].object_url(BUCKET, "many"), None)
        .await
        .unwrap();
    assert_eq!(sha256_hex(&r.body), sha256_hex(&data));
    let peer_fills = fleet.replicas[0].metric_value("orca_peer_fills_total{result=\"ok\"}");
    let mut peers = fleet.addrs.clone();
    peers.sort();
    let theirs = (0..2048u64)
        .filter(|i| {
            let id = ChunkId::from_fields("test-origin", BUCKET, "many", &etag, 4096, *i);
            rendezvous::choose(&peers, &id) == Some(fleet.addrs[1].as_str())
        })
        .count() as f64;
    assert_eq!(peer_fills, theirs);
    assert!(peer_fills > 900.0, "{peer_fills}");
    let opened = connections_to(peer_port).difference(&before).count();
    // Pooled connections are reused: one client keeps at most `readahead + 1` (4 + 1) fills
    // in flight, so no more connections than that are ever needed, however many fills.
    assert!(
        opened <= 5,
        "{opened} connections for {peer_fills} peer fills"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stops_answering_costs_one_piece_deadline_then_local_fills() {
    // origin_timeout 1s: the edge waits at most 5 * 1 + 5 = 10 s for a piece from a peer.
    let fleet = start(
        2,
        everyone,
        "limits:\n  origin_concurrency: 16\n  origin_timeout: 1s\n",
        false,
    )
    .await;
    let data = deterministic_bytes(29, 4 * MIB);
    let mut peers = fleet.addrs.clone();
    peers.sort();
    // A key with at least one chunk that replica 1 coordinates.
    let mut chosen = None;
    for attempt in 0..20 {
        let key = format!("frozen-{attempt}");
        let etag = fleet.put(&key, &data).await;
        let theirs = (0..4u64)
            .filter(|i| {
                let id = ChunkId::from_fields("test-origin", BUCKET, &key, &etag, MIB as u64, *i);
                rendezvous::choose(&peers, &id) == Some(fleet.addrs[1].as_str())
            })
            .count();
        if theirs > 0 {
            chosen = Some(key);
            break;
        }
    }
    let key = chosen.expect("no key with a chunk of replica 1 in 20 tries");
    // Replica 1 stops: its kernel still accepts connections, nothing answers them.
    fleet.replicas[1].signal("STOP");
    let r = http_get(&fleet.replicas[0].object_url(BUCKET, &key), None)
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(sha256_hex(&r.body), sha256_hex(&data));
    // The peer fill failed at its deadline and replica 0 filled every chunk itself.
    assert!(
        fleet.replicas[0].metric_value("orca_peer_fills_total{result=\"error\"}") >= 1.0,
        "{}",
        fleet.replicas[0].log_tail()
    );
    assert_eq!(
        fleet.replicas[0].metric_value("orca_peer_fills_total{result=\"ok\"}"),
        0.0
    );
    let fetched = fleet.fetched_by(MIB as u64);
    let mut mine = fetched[0].clone();
    mine.sort();
    assert_eq!(mine, [0, 1, 2, 3]);
    assert!(fetched[1].is_empty(), "{fetched:?}");
    // (Stopped, it is killed by pid when the fleet drops.)
}

/// A coordinator that cannot get its answer in time (its own slow path to the origin, an
/// overloaded replica) answers the asking replica `504 OriginTimeout`. That is the
/// coordinator's trouble, not the object's: the asking replica fills the chunk itself and the
/// client gets its bytes. (The origin's own verdicts, a 5xx after the coordinator's retries
/// included, go to the client: asking the origin again from every replica would multiply its
/// load when it is struggling.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinators_timeout_falls_back_to_a_local_fill() {
    let fleet = start(2, everyone, "limits:\n  origin_timeout: 1s\n", false).await;
    let data = deterministic_bytes(31, MIB);
    let etag = fleet.put("obj", &data).await;
    let id = ChunkId::from_fields("test-origin", BUCKET, "obj", &etag, MIB as u64, 0);
    let coordinator = fleet
        .addrs
        .iter()
        .position(|a| Some(a.as_str()) == rendezvous::choose(&fleet.addrs, &id))
        .unwrap();
    let entry = 1 - coordinator;
    // Every chunk GET of the coordinator stalls past its origin timeout (all its attempts).
    fleet.proxies[coordinator].push_fault(
        FaultRule::new(Fault::Stall(std::time::Duration::from_secs(5)))
            .method("GET")
            .with_range()
            .times(10),
    );
    let got = http_get(&fleet.replicas[entry].object_url(BUCKET, "obj"), None)
        .await
        .unwrap();
    assert_eq!(got.status, 200, "{}", String::from_utf8_lossy(&got.body));
    assert_eq!(sha256_hex(&got.body), sha256_hex(&data));
    let r = &fleet.replicas[entry];
    let peer_errors = metric_value_opt(&r.metrics(), "orca_peer_fills_total{result=\"error\"}");
    assert_eq!(
        peer_errors,
        Some(1.0),
        "the peer's failure was seen and counted"
    );
    assert!(fleet.proxies[coordinator].counts().gets_with_range >= 1);
    assert_eq!(
        fleet.proxies[entry].counts().gets_with_range,
        1,
        "then the entry replica filled the chunk itself"
    );
}

/// A sub-range fill through a peer (issue 15): the client's 4 KiB at the end of a chunk that
/// the other replica coordinates. The asking replica sends its part (`from`/`to`), the
/// coordinator fetches that part first and answers it alone (`206`); the asking replica makes
/// no origin request, and the coordinator fetches each byte of the chunk once. Seen failing
/// against a build whose fill client does not send its part (the coordinator's first GET was
/// the chunk's first sub-range).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_fills_the_part_asked_for_first_and_answers_it_alone() {
    let extra =
        "chunking:\n  size: 4MiB\n  tiers: []\n  subrange_size: 1MiB\n  subrange_streams: 2\n";
    let fleet = start(2, everyone, extra, false).await;
    let chunk = 4 * MIB;
    let data = deterministic_bytes(25, 8 * chunk);
    let etag = fleet.put("parts", &data).await;
    let peers = {
        let mut p = fleet.addrs.clone();
        p.sort();
        p
    };
    let index = (0..8u64)
        .find(|i| {
            let id = ChunkId::from_fields("test-origin", BUCKET, "parts", &etag, chunk as u64, *i);
            rendezvous::choose(&peers, &id) == Some(fleet.addrs[1].as_str())
        })
        .expect("replica 1 coordinates one of 8 chunks");
    let end = (index as usize + 1) * chunk;
    let range = format!("bytes={}-{}", end - 4096, end - 1);
    let url = fleet.replicas[0].object_url(BUCKET, "parts");
    let r = http_get(&url, Some(&range)).await.unwrap();
    assert_eq!(r.status, 206);
    assert!(r.body == data[end - 4096..end], "the tail's bytes differ");
    assert_eq!(
        fleet.replicas[0].metric_value("orca_peer_fills_total{result=\"ok\"}"),
        1.0
    );
    assert_eq!(
        fleet.proxies[0].counts().gets_with_range,
        0,
        "no local fill"
    );
    // The fill ended whole (its commit may fail on a nearly full shared disk, the fs store's
    // default `min_free`: either way it was tried, once).
    let ended = poll_until(std::time::Duration::from_secs(30), || {
        let m = fleet.replicas[1].metrics();
        let n = common::orca::metric_value_opt(&m, "orca_cachestore_commits_total").unwrap_or(0.0);
        (n >= 1.0).then_some(n)
    });
    assert_eq!(ended, Some(1.0));
    let log = fleet.proxies[1].counts().log;
    let ranges: Vec<(usize, usize)> = log
        .iter()
        .filter_map(|r| r.range.as_deref())
        .map(|r| {
            let (a, b) = r.strip_prefix("bytes=").unwrap().split_once('-').unwrap();
            (a.parse().unwrap(), b.parse::<usize>().unwrap() + 1)
        })
        .collect();
    assert_eq!(
        ranges[0],
        (end - 4096, end),
        "the client's part first: {ranges:?}"
    );
    let mut sorted = ranges.clone();
    sorted.sort_unstable();
    let mut at = end - chunk;
    for (a, b) in &sorted {
        assert_eq!(*a, at, "a gap or a byte fetched twice: {ranges:?}");
        at = *b;
    }
    assert_eq!(at, end);
}
