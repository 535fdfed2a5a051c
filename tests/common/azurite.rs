//! Azure Blob Storage played by Azurite (installed by hack/install-azurite.sh, found at
//! `$AZURITE_BLOB` or `~/.cache/orca-azurite/node_modules/.bin/azurite-blob`): the process on a
//! free port of 127.0.0.1, stopped by pid on drop, and a small client that seeds it with
//! requests signed by Orca's own Shared Key signer.

use std::path::PathBuf;
use std::process::Command;

use ::orca::net::encode::{encode_key, encode_query_value};
use ::orca::origin::azureblob::sign::{now_rfc1123, SharedKey, API_VERSION};

use super::{file_tail, http_request, spawn_on_free_port, ChildGuard, OrcaConfig};

pub const ACCOUNT: &str = "devstoreaccount1";
/// Azurite's well-known development key (public, in Microsoft's Azurite documentation).
pub const KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
/// Valid base64, but not the account's key.
pub const WRONG_KEY: &str =
    "Fby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
/// The container the shared [`super::Stack`] creates.
pub const CONTAINER: &str = "data";

/// The `azurite-blob` binary: `$AZURITE_BLOB`, else where hack/install-azurite.sh puts it.
pub fn azurite_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("AZURITE_BLOB") {
        return PathBuf::from(path);
    }
    let home = std::env::var_os("HOME").unwrap_or_default();
    PathBuf::from(home).join(".cache/orca-azurite/node_modules/.bin/azurite-blob")
}

/// A running Azurite blob service, stopped by pid on drop.
pub struct Azurite {
    // Field order: the process stops before its directory is removed.
    _child: ChildGuard,
    port: u16,
    log_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Azurite {
    pub fn start() -> Azurite {
        Azurite::start_with(&[])
    }

    /// Azurite with `extra` arguments (HTTPS and OAuth: `tests/common/entra.rs`).
    pub fn start_with(extra: &[String]) -> Azurite {
        let dir = tempfile::Builder::new()
            .prefix("orca-azurite-")
            .tempdir()
            .unwrap();
        let log_path = dir.path().join("azurite.log");
        let bin = azurite_bin();
        let (child, port) = spawn_on_free_port(
            "azurite-blob",
            &log_path,
            "run hack/install-azurite.sh",
            |port| {
                let mut cmd = Command::new(&bin);
                cmd.args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
                    .arg("--location")
                    .arg(dir.path().join("data"))
                    .args(["--skipApiVersionCheck", "--disableTelemetry", "--silent"])
                    .args(extra);
                cmd
            },
        );
        Azurite {
            _child: child,
            port,
            log_path,
            _dir: dir,
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn log_tail(&self) -> String {
        file_tail(&self.log_path, 40)
    }
}

/// Seeds Azurite with plain HTTP requests signed by Orca's Shared Key signer.
pub struct AzClient {
    base: String,
    key: SharedKey,
}

/// An Azure answer: status, headers, body.
pub struct AzAnswer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl AzAnswer {
    pub fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    }
}

/// A Blob service request as signed: its path (`/account/container[/blob]`), its URL on `base`
/// with the query, and the headers that are signed (`x-ms-date`, `x-ms-version`, a PUT's
/// `content-length`, then the caller's). Shared by [`AzClient`] and the Entra ID tests' curl
/// client, which add their own `authorization`.
pub struct BlobRequest<'a> {
    pub path: String,
    pub url: String,
    pub headers: Vec<(&'a str, String)>,
}

impl<'a> BlobRequest<'a> {
    pub fn new(
        method: &str,
        base: &str,
        (container, blob): (&str, Option<&str>),
        query: &[(&str, &str)],
        headers: &[(&'a str, &str)],
        body_len: usize,
    ) -> BlobRequest<'a> {
        let mut path = format!("/{ACCOUNT}/{}", encode_key(container));
        if let Some(b) = blob {
            path.push('/');
            path.push_str(&encode_key(b));
        }
        let mut all = vec![
            ("x-ms-date", now_rfc1123()),
            ("x-ms-version", API_VERSION.to_string()),
        ];
        if method == "PUT" {
            all.push(("content-length", body_len.to_string()));
        }
        all.extend(headers.iter().map(|(k, v)| (*k, v.to_string())));
        let mut url = format!("{base}{path}");
        for (i, (k, v)) in query.iter().enumerate() {
            url.push(if i == 0 { '?' } else { '&' });
            url.push_str(&format!("{k}={}", encode_query_value(v)));
        }
        BlobRequest {
            path,
            url,
            headers: all,
        }
    }

    /// The headers as `SharedKey::authorization` and the HTTP clients take them.
    pub fn header_refs(&self) -> Vec<(&str, &str)> {
        self.headers.iter().map(|(k, v)| (*k, v.as_str())).collect()
    }
}

impl AzClient {
    pub fn new(azurite: &Azurite) -> AzClient {
        AzClient {
            base: format!("http://{}", azurite.addr()),
            key: SharedKey::new(ACCOUNT, KEY).unwrap(),
        }
    }

    pub async fn send(
        &self,
        method: &str,
        container: &str,
        blob: Option<&str>,
        query: &[(&str, &str)],
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> AzAnswer {
        let request = BlobRequest::new(
            method,
            &self.base,
            (container, blob),
            query,
            headers,
            body.len(),
        );
        let mut all = request.header_refs();
        let auth = self
            .key
            .authorization(method, &request.path, query, &all)
            .unwrap();
        all.push(("authorization", &auth));
        let r = http_request(method, &request.url, &all, Some(body))
            .await
            .unwrap();
        AzAnswer {
            status: r.status,
            headers: r.headers,
            body: r.body,
        }
    }

    pub async fn create_container(&self, name: &str) {
        let r = self
            .send("PUT", name, None, &[("restype", "container")], &[], vec![])
            .await;
        assert_eq!(r.status, 201, "create container {name}");
    }

    /// Put Blob (a block blob); returns the ETag without quotes.
    pub async fn put_blob(&self, container: &str, name: &str, data: &[u8]) -> String {
        self.put_blob_with(container, name, data, &[]).await
    }

    pub async fn put_blob_with(
        &self,
        container: &str,
        name: &str,
        data: &[u8],
        headers: &[(&str, &str)],
    ) -> String {
        let mut all = vec![("x-ms-blob-type", "BlockBlob")];
        all.extend_from_slice(headers);
        let r = self
            .send("PUT", container, Some(name), &[], &all, data.to_vec())
            .await;
        assert_eq!(
            r.status,
            201,
            "put {name}: {}",
            String::from_utf8_lossy(&r.body)
        );
        r.header("etag").trim_matches('"').to_string()
    }

    pub async fn put_page_blob(&self, container: &str, name: &str) {
        let r = self
            .send(
                "PUT",
                container,
                Some(name),
                &[],
                &[
                    ("x-ms-blob-type", "PageBlob"),
                    ("x-ms-blob-content-length", "1024"),
                ],
                vec![],
            )
            .await;
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    }

    pub async fn put_append_blob(&self, container: &str, name: &str) {
        let r = self
            .send(
                "PUT",
                container,
                Some(name),
                &[],
                &[("x-ms-blob-type", "AppendBlob")],
                vec![],
            )
            .await;
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    }

    pub async fn properties(&self, container: &str, name: &str) -> AzAnswer {
        self.send("HEAD", container, Some(name), &[], &[], vec![])
            .await
    }
}

/// The Orca configuration for an Azure origin at `endpoint` (`http://host:port/account`).
pub fn azure_config(endpoint: &str, key: &str) -> OrcaConfig {
    OrcaConfig::new(endpoint)
        .origin_id("az")
        .extra_yaml(&format!(
            "origin:\n  id: az\n  driver: azureblob\n  azureblob:\n    account: {ACCOUNT}\n    endpoint: {endpoint}\n"
        ))
        .env("AZURE_STORAGE_KEY", key)
}
