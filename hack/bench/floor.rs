//! The benchmark's floor for small objects (issue 15): a bare Pingora HTTP server, the
//! framework Orca's edge is built on, answering GETs of small files from memory with no cache,
//! no S3 surface, no metrics and no logging. `hack/bench/run.sh` starts it next to Orca and
//! nginx-slice and reports Orca's warm 4 KiB rate as a share of this one: what Orca costs on
//! top of Pingora itself.
//!
//! ```text
//! cargo build --release --features bench-floor --bin bench-floor
//! bench-floor --listen 127.0.0.1:8080 --dir OBJECTS --prefix /bucket/small/ [--threads 2]
//! ```
//!
//! Every regular file directly in `--dir` is read once at start and served at `--prefix` +
//! its name (200, `Content-Length`, `Content-Type`); any other path is a 404. It is Pingora's
//! own `ServeHttp` app, with the same listener settings as Orca's edge (a 64 KiB write buffer,
//! so a header and a 4 KiB body leave in one write) and as many threads as Orca is given.

use clap::Parser;
use http::{Response, StatusCode};
use pingora::apps::http_app::{HttpServer, ServeHttp};
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::protocols::http::ServerSession;
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::services::listening::Service;
use std::collections::HashMap;
use std::path::PathBuf;

/// Command line.
#[derive(Parser)]
struct Args {
    /// Address to listen on.
    #[arg(long)]
    listen: String,
    /// Directory whose files are served.
    #[arg(long)]
    dir: PathBuf,
    /// URL path prefix of the files (`/bucket/small/`).
    #[arg(long, default_value = "/")]
    prefix: String,
    /// Worker threads (Orca's bench config uses 2).
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

/// The files, by URL path.
struct Floor {
    files: HashMap<String, Vec<u8>>,
}

#[async_trait::async_trait]
impl ServeHttp for Floor {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let (status, body) = match self.files.get(session.req_header().uri.path()) {
            Some(body) => (StatusCode::OK, body.clone()),
            None => (StatusCode::NOT_FOUND, Vec::new()),
        };
        Response::builder()
            .status(status)
            .header("content-type", "application/octet-stream")
            .header("content-length", body.len())
            .body(body)
            .expect("a response from constant parts")
    }
}

fn main() {
    let args = Args::parse();
    let mut files = HashMap::new();
    for entry in std::fs::read_dir(&args.dir).expect("--dir is readable") {
        let entry = entry.expect("a directory entry");
        if entry.file_type().is_ok_and(|t| t.is_file()) {
            let name = entry.file_name().to_string_lossy().into_owned();
            let bytes = std::fs::read(entry.path()).expect("a readable file");
            files.insert(format!("{}{name}", args.prefix), bytes);
        }
    }
    // Stop at once on SIGTERM: the bench stops its servers by pid.
    let conf = ServerConf {
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut service = Service::new("floor".to_string(), HttpServer::new_app(Floor { files }));
    service.add_listener(
        ListenerConfig::tcp(args.listen.as_str()).l4_buffer(L4BufferSettings {
            read: Some(0),
            write: Some(64 * 1024),
        }),
    );
    service.threads = Some(args.threads);
    server.add_service(service);
    server.run_forever();
}
