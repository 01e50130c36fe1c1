//! TLS through a real reverse proxy: Debian's nginx, run as a plain process with
//! a temporary prefix and deploy/nginx/rendezvous.conf (only its addresses and
//! certificate paths rewritten), terminates TLS with a throwaway certificate
//! authority made by `openssl` in front of a real node.
//!
//! * Two `wss://` clients (rustls, trusting only the test CA) match and chat.
//! * `X-Forwarded-For` reaches the node and the node trusts it: with
//!   `--trusted-proxies 127.0.0.1/32` and `--max-sessions-per-ip 1`, clients from
//!   different loopback addresses each get a session although the node sees
//!   every connection come from nginx, and a second one from the same address is
//!   refused (503).
//! * The load tester runs the chat-pairs scenario (smoke size) over `wss://`
//!   through the same configuration, and succeeds.
//!
//! Missing tools (nginx, openssl) fail the test with the package to install;
//! scripts/test.sh installs them.

use rendezvous_test_support as common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use common::cluster::Node;
use common::{engine_bin, free_port, Client, TempDir};
use serde_json::json;
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::Connector;

const NGINX: &str = "/usr/sbin/nginx";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn require(program: &str, package: &str) {
    let found = if program.contains('/') {
        Path::new(program).is_file()
    } else {
        Command::new(program).arg("version").output().is_ok()
    };
    assert!(
        found,
        "{program} not found: install Debian's `{package}` package (scripts/test.sh installs it when missing)"
    );
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl").args(args).output().expect("run openssl");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A throwaway CA and a certificate it signed for `localhost` and 127.0.0.1:
/// (ca.pem, server chain, server key).
fn certificates(dir: &TempDir) -> (String, String, String) {
    let (ca_key, ca) = (dir.join("ca.key"), dir.join("ca.pem"));
    let (key, csr, cert) = (dir.join("server.key"), dir.join("server.csr"), dir.join("server.pem"));
    let ext = dir.join("server.ext");
    openssl(&["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", &ca_key]);
    openssl(&[
        "req",
        "-x509",
        "-new",
        "-key",
        &ca_key,
        "-out",
        &ca,
        "-days",
        "2",
        "-subj",
        "/CN=rendezvous test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(&["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", &key]);
    openssl(&["req", "-new", "-key", &key, "-out", &csr, "-subj", "/CN=localhost"]);
    std::fs::write(
        &ext,
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write server.ext");
    openssl(&[
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        &ca,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-out",
        &cert,
        "-days",
        "2",
        "-extfile",
        &ext,
    ]);
    (ca, cert, key)
}

/// Debian's nginx with deploy/nginx/rendezvous.conf in front of `upstream`,
/// serving TLS on the returned loopback port. Killed on drop.
struct Nginx {
    child: Child,
    port: u16,
    prefix: PathBuf,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.prefix.join("error.log")).unwrap_or_default();
            eprintln!("---- nginx error.log ----\n{log}");
        }
    }
}

/// `text` with `from` replaced by `to`, which must occur (so the shipped file
/// cannot drift away from what the test runs).
fn rewrite(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "deploy/nginx/rendezvous.conf no longer has `{from}`");
    text.replace(from, to)
}

fn start_nginx(dir: &TempDir, name: &str, upstream: SocketAddr, cert: &str, key: &str) -> Nginx {
    require(NGINX, "nginx");
    let prefix = PathBuf::from(dir.join(name));
    std::fs::create_dir_all(&prefix).expect("nginx prefix");
    let shipped = std::fs::read_to_string(repo().join("deploy/nginx/rendezvous.conf"))
        .expect("read deploy/nginx/rendezvous.conf");
    for attempt in 0..3 {
        let (port, http_port) = (free_port(), free_port());
        let mut conf = rewrite(&shipped, "server node-a:8080;", &format!("server {upstream};"));
        conf = rewrite(&conf, "server node-b:8080;", "");
        conf = rewrite(&conf, "listen 80;", &format!("listen 127.0.0.1:{http_port};"));
        conf = rewrite(&conf, "listen [::]:80;", "");
        conf = rewrite(&conf, "listen 443 ssl;", &format!("listen 127.0.0.1:{port} ssl;"));
        conf = rewrite(&conf, "listen [::]:443 ssl;", "");
        conf = rewrite(&conf, "/etc/nginx/tls/fullchain.pem", cert);
        conf = rewrite(&conf, "/etc/nginx/tls/privkey.pem", key);
        std::fs::write(prefix.join("rendezvous.conf"), conf).expect("write rendezvous.conf");
        let p = prefix.display();
        // One process as the current user (no root, no system service), everything
        // it writes under the prefix.
        let main = format!(
            "master_process off;\ndaemon off;\npid {p}/nginx.pid;\nerror_log {p}/error.log warn;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {p}/body;\n  proxy_temp_path {p}/proxy;\n\
               fastcgi_temp_path {p}/fastcgi;\n  uwsgi_temp_path {p}/uwsgi;\n  scgi_temp_path {p}/scgi;\n\
               include {p}/rendezvous.conf;\n}}\n"
        );
        std::fs::write(prefix.join("nginx.conf"), main).expect("write nginx.conf");
        let child = Command::new(NGINX)
            .arg("-p")
            .arg(&prefix)
            .arg("-e")
            .arg(prefix.join("error.log"))
            .arg("-c")
            .arg(prefix.join("nginx.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        let mut nginx = Nginx { child, port, prefix: prefix.clone() };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return nginx;
            }
            if nginx.child.try_wait().ok().flatten().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let log = std::fs::read_to_string(prefix.join("error.log")).unwrap_or_default();
        eprintln!("nginx (try {attempt}) did not listen on {port}:\n{log}");
        let _ = nginx.child.kill();
    }
    panic!("nginx did not start");
}

/// rustls trusting only `ca`.
fn tls(ca: &str) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(ca).expect("read ca.pem") {
        roots.add(c.expect("a PEM certificate")).expect("add the test CA");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// A `wss://` handshake through nginx from source address `from`: the client, or
/// the HTTP status that refused it.
async fn wss(
    tls: &Arc<rustls::ClientConfig>,
    port: u16,
    from: Ipv4Addr,
    user: &str,
) -> Result<Client, u16> {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::new(IpAddr::V4(from), 0)).expect("bind a loopback source address");
    let stream = socket.connect(([127, 0, 0, 1], port).into()).await.expect("connect to nginx");
    let url = format!("wss://localhost:{port}/ws?user={user}");
    let req = url.into_client_request().expect("request");
    match tokio_tungstenite::client_async_tls_with_config(
        req,
        stream,
        Some(rendezvous_actors::protocol::client::ws_config()),
        Some(Connector::Rustls(tls.clone())),
    )
    .await
    {
        Ok((ws, _)) => {
            let mut c = Client {
                ws,
                user_id: user.to_owned(),
                welcome: rendezvous_actors::protocol::ServerFrame::NoMatchFound {},
            };
            c.welcome = c.recv_kind("welcome").await;
            Ok(c)
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err(r.status().as_u16()),
        Err(e) => panic!("{user}: wss handshake through nginx: {e}"),
    }
}

#[tokio::test]
async fn wss_through_nginx_matches_chats_and_forwards_the_client_address() {
    let dir = TempDir::new("tls-proxy");
    let (ca, cert, key) = certificates(&dir);
    let node = Node::spawn(
        None,
        "tls-a",
        &[
            ("--anonymous", "allow"),
            ("--trusted-proxies", "127.0.0.1/32"),
            ("--max-sessions-per-ip", "1"),
        ],
    );
    let nginx = start_nginx(&dir, "nginx-a", node.addr, &cert, &key);
    let tls = tls(&ca);
    let lo = |last: u8| Ipv4Addr::new(127, 0, 0, last);

    // Two clients from two addresses: both admitted, although every connection
    // reaches the node from nginx (127.0.0.1).
    let mut alice = wss(&tls, nginx.port, lo(2), "alice").await.expect("alice admitted");
    let mut bob = wss(&tls, nginx.port, lo(3), "bob").await.expect("bob admitted");
    alice.find_match(&["tls", "nginx"]).await;
    alice.recv_kind("searching").await;
    bob.find_match(&["tls", "nginx"]).await;
    let found = bob.recv_kind("match_found").await;
    alice.recv_kind("match_found").await;
    let room = common::room_of(&found);
    chat(&mut alice, &mut bob, &room, "hello over wss").await;
    chat(&mut bob, &mut alice, &room, "hi").await;

    // A second session from alice's address is over the per-address cap of 1:
    // the node counted the forwarded address, not nginx's.
    assert_eq!(
        wss(&tls, nginx.port, lo(2), "carol").await.err(),
        Some(503),
        "a second session from 127.0.0.2 must be refused by --max-sessions-per-ip 1"
    );
    let dave = wss(&tls, nginx.port, lo(4), "dave").await;
    assert!(dave.is_ok(), "a client from a third address was refused: {:?}", dave.err());

    // Plain HTTP through the proxy: /readyz answers, /metrics stays inside.
    let https_get = |path: &str| -> u16 {
        use std::io::{Read, Write};
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        let conn = rustls::ClientConnection::new(tls.clone(), name).expect("TLS client");
        let sock = std::net::TcpStream::connect(("127.0.0.1", nginx.port)).expect("connect");
        sock.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        let mut s = rustls::StreamOwned::new(conn, sock);
        let req = format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n");
        s.write_all(req.as_bytes()).expect("write");
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        common::http::parse_response(&buf).0
    };
    assert_eq!(https_get("/readyz"), 200);
    assert_eq!(https_get("/metrics"), 404, "nginx must not publish /metrics");
    drop((alice, bob, dave));
}

/// `from` sends `text` to `room` (its ack and its own copy, in either order); `to`
/// receives it.
async fn chat(from: &mut Client, to: &mut Client, room: &str, text: &str) {
    from.send_json(json!({"action": "send", "room_id": room, "text": text})).await;
    let (mut ack, mut own) = (false, false);
    while !(ack && own) {
        match from.recv().await.kind() {
            "ack" => ack = true,
            "message" => own = true,
            _ => {}
        }
    }
    let got: serde_json::Value =
        serde_json::from_str(&to.recv_kind("message").await.to_json()).expect("JSON");
    assert_eq!(got["text"], text, "{got}");
}

/// `rendezvous-loadtest`, built once by this test process (its binary is not a
/// target of this package's tests).
fn loadtest_bin() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let out = Command::new(cargo)
                .args(["build", "--release", "--locked", "-p", "rendezvous-loadtest"])
                .current_dir(repo())
                .output()
                .expect("run cargo build");
            assert!(
                out.status.success(),
                "cargo build -p rendezvous-loadtest: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            engine_bin().with_file_name("rendezvous-loadtest")
        })
        .clone()
}

#[tokio::test]
async fn the_load_tester_runs_a_scenario_over_wss_through_nginx() {
    let dir = TempDir::new("tls-loadtest");
    let (ca, cert, key) = certificates(&dir);
    let node = Node::spawn(
        None,
        "tls-b",
        &[("--anonymous", "allow"), ("--trusted-proxies", "127.0.0.1/32")],
    );
    let nginx = start_nginx(&dir, "nginx-b", node.addr, &cert, &key);
    let bin = loadtest_bin();
    let scenario = repo().join("loadtest/scenarios/chat-pairs.toml");
    let out = tokio::task::spawn_blocking(move || {
        let mut child = Command::new(bin)
            .arg("run")
            .arg(&scenario)
            .arg("--smoke")
            .args(["--url", &format!("wss://localhost:{}/ws", nginx.port)])
            .args(["--ca-file", &ca])
            .args(["--set", "max_secs=60"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start rendezvous-loadtest");
        let deadline = Instant::now() + Duration::from_secs(90);
        while child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let out = child.wait_with_output().expect("load tester output");
        drop(nginx);
        out
    })
    .await
    .expect("join");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the load tester failed over wss://:\n{text}");
    // The sessions were the node's: through nginx, over TLS.
    let (status, metrics) = common::http::http_get(node.addr, "/metrics").await;
    assert_eq!(status, 200);
    let opened: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("rendezvous_sessions_opened_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    assert!(opened >= 2.0, "the node saw {opened} sessions; the run did not reach it:\n{text}");
}
