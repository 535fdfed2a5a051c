//! `Stack`: one origin (moto's S3 or Azurite's Blob service), a counting/fault proxy in front of
//! it, and an `orca` process reading through the proxy. The origin is a parameter, so the S3 and
//! Azure suites run the same cases (`super::cases`) on the same helpers.

use super::azurite::{azure_config, AzClient, Azurite, ACCOUNT, KEY};
use super::{create_bucket, put_object, FaultProxy, Moto, OrcaConfig, OrcaProcess, RequestRecord};

/// Which origin a [`Stack`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// moto's S3 server; Orca's origin id `test-origin`.
    S3,
    /// Azurite's Blob service with the account key; Orca's origin id `az`.
    Azure,
}

/// The origin server of a [`Stack`].
pub enum OriginServer {
    /// moto.
    S3(Moto),
    /// Azurite and a client signed with the account key.
    Azure(Azurite, AzClient),
}

/// An origin, a [`FaultProxy`] in front of it and Orca reading through the proxy; the bucket
/// (container) exists.
pub struct Stack {
    // Field order: Orca stops first, then the proxy, then the origin.
    /// The `orca` process.
    pub orca: OrcaProcess,
    /// The counting/fault proxy between Orca and the origin.
    pub proxy: FaultProxy,
    /// The origin server.
    pub server: OriginServer,
    /// The bucket (container) the stack created.
    pub bucket: String,
}

impl Stack {
    /// Starts `origin` with bucket `bucket`, the proxy, and Orca with the test defaults changed
    /// by `configure`.
    pub async fn start(
        origin: Origin,
        bucket: &str,
        configure: impl FnOnce(OrcaConfig) -> OrcaConfig,
    ) -> Stack {
        match origin {
            Origin::S3 => {
                let moto = Moto::start();
                create_bucket(&moto.endpoint(), bucket).await;
                let proxy = FaultProxy::start(&moto.endpoint());
                let orca = OrcaProcess::start(configure(OrcaConfig::new(&proxy.endpoint())));
                Stack {
                    orca,
                    proxy,
                    server: OriginServer::S3(moto),
                    bucket: bucket.to_string(),
                }
            }
            Origin::Azure => Self::start_azure(KEY, bucket, configure).await,
        }
    }

    /// An Azure stack whose Orca signs with `key` (e.g. a wrong one).
    pub async fn start_azure(
        key: &str,
        container: &str,
        configure: impl FnOnce(OrcaConfig) -> OrcaConfig,
    ) -> Stack {
        let azurite = Azurite::start();
        let az = AzClient::new(&azurite);
        az.create_container(container).await;
        let proxy = FaultProxy::start(&azurite.addr());
        let endpoint = format!("{}/{ACCOUNT}", proxy.endpoint());
        let orca = OrcaProcess::start(configure(azure_config(&endpoint, key)));
        Stack {
            orca,
            proxy,
            server: OriginServer::Azure(azurite, az),
            bucket: container.to_string(),
        }
    }

    /// Which origin this is.
    pub fn origin(&self) -> Origin {
        match self.server {
            OriginServer::S3(_) => Origin::S3,
            OriginServer::Azure(..) => Origin::Azure,
        }
    }

    /// Orca's `origin.id` (part of every chunk's identity).
    pub fn origin_id(&self) -> &str {
        &self.orca.config().origin_id
    }

    /// moto; panics on an Azure stack.
    pub fn moto(&self) -> &Moto {
        match &self.server {
            OriginServer::S3(moto) => moto,
            OriginServer::Azure(..) => panic!("an Azure stack has no moto"),
        }
    }

    /// Azurite's client; panics on an S3 stack.
    pub fn az(&self) -> &AzClient {
        match &self.server {
            OriginServer::Azure(_, az) => az,
            OriginServer::S3(_) => panic!("an S3 stack has no Azurite"),
        }
    }

    /// Azurite; panics on an S3 stack.
    pub fn azurite(&self) -> &Azurite {
        match &self.server {
            OriginServer::Azure(azurite, _) => azurite,
            OriginServer::S3(_) => panic!("an S3 stack has no Azurite"),
        }
    }

    /// Uploads straight to the origin (not through the proxy); returns the ETag without
    /// quotes, whatever the origin.
    pub async fn put(&self, key: &str, data: &[u8]) -> String {
        match &self.server {
            OriginServer::S3(moto) => {
                let etag = put_object(&moto.endpoint(), &self.bucket, key, data.to_vec()).await;
                etag.trim_matches('"').to_string()
            }
            OriginServer::Azure(_, az) => az.put_blob(&self.bucket, key, data).await,
        }
    }

    /// Orca's URL of `key` in the stack's bucket.
    pub fn url(&self, key: &str) -> String {
        self.orca.object_url(&self.bucket, key)
    }

    /// Ranged object GETs that reached the origin: Orca's chunk GETs (`Range` for S3,
    /// `x-ms-range` for Azure).
    pub fn origin_gets(&self) -> usize {
        let counts = self.proxy.counts();
        match self.origin() {
            Origin::S3 => counts.gets_with_range,
            Origin::Azure => counts
                .log
                .iter()
                .filter(|r| r.method == "GET" && r.header("x-ms-range").is_some())
                .count(),
        }
    }

    /// Every request that reached the origin, whatever it was.
    pub fn origin_requests(&self) -> usize {
        self.proxy.counts().total
    }

    /// Requests of `method` for the object `key` that reached the origin.
    pub fn requests_for(&self, method: &str, key: &str) -> usize {
        let suffix = format!("/{}/{}", self.bucket, super::encode_key(key));
        self.proxy
            .counts()
            .log
            .iter()
            .filter(|r: &&RequestRecord| r.method == method && r.path().ends_with(&suffix))
            .count()
    }

    /// The origin's log tail, for assertion messages.
    pub fn origin_log_tail(&self) -> String {
        match &self.server {
            OriginServer::S3(moto) => moto.log_tail(40),
            OriginServer::Azure(azurite, _) => azurite.log_tail(),
        }
    }
}
