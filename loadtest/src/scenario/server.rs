//! What the servers say about themselves over HTTP on the WebSocket port:
//! `/metrics` (resident memory, open files, sessions, CPU time) and `/readyz`.

use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

/// `ws://host:port/ws` → `http://host:port`.
pub fn http_base(ws_url: &str) -> Option<String> {
    let rest = ws_url.strip_prefix("ws://")?;
    let authority = rest.split(['/', '?']).next()?;
    Some(format!("http://{authority}"))
}

/// GET `path` on the server behind `ws_url`: (status, body), within 5 s.
pub async fn get(ws_url: &str, path: &str) -> Result<(u16, String), String> {
    let base = http_base(ws_url).ok_or_else(|| format!("{ws_url}: only ws:// is probed"))?;
    let authority = base.trim_start_matches("http://").to_owned();
    let fetch = async {
        let stream = tokio::net::TcpStream::connect(&authority)
            .await
            .map_err(|e| format!("connect {authority}: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("http handshake {authority}: {e}"))?;
        tokio::spawn(conn);
        let request = hyper::Request::get(path)
            .header(hyper::header::HOST, &authority)
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("request: {e}"))?;
        let response =
            sender.send_request(request).await.map_err(|e| format!("GET {base}{path}: {e}"))?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("GET {base}{path} body: {e}"))?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(Duration::from_secs(5), fetch)
        .await
        .map_err(|_| format!("GET {base}{path}: timed out"))?
}

/// The value of an unlabelled sample `name` in Prometheus text.
pub fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// A server's resource use at one moment.
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    pub rss_bytes: f64,
    pub open_fds: f64,
    pub sessions: f64,
}

pub async fn usage(ws_url: &str) -> Result<Usage, String> {
    let (status, text) = get(ws_url, "/metrics").await?;
    if status != 200 {
        return Err(format!("{ws_url} /metrics answered {status}"));
    }
    let need = |name: &str| sample(&text, name).ok_or_else(|| format!("{ws_url}: no {name}"));
    Ok(Usage {
        rss_bytes: need("process_resident_memory_bytes")?,
        open_fds: need("process_open_fds")?,
        sessions: need("rendezvous_connections").unwrap_or(0.0),
    })
}

/// Summed over every server.
pub async fn usage_of_all(urls: &[String]) -> Result<Usage, String> {
    let mut total = Usage::default();
    for url in urls {
        let u = usage(url).await?;
        total.rss_bytes += u.rss_bytes;
        total.open_fds += u.open_fds;
        total.sessions += u.sessions;
    }
    Ok(total)
}

/// CPU seconds used so far (`process_cpu_seconds_total`), summed over every
/// server; an error when one has no `/metrics` (the relay).
pub async fn cpu_seconds_of_all(urls: &[String]) -> Result<f64, String> {
    let mut total = 0.0;
    for url in urls {
        let (status, text) = get(url, "/metrics").await?;
        if status != 200 {
            return Err(format!("{url} /metrics answered {status}"));
        }
        total += sample(&text, "process_cpu_seconds_total")
            .ok_or_else(|| format!("{url}: no process_cpu_seconds_total"))?;
    }
    Ok(total)
}

pub async fn ready(ws_url: &str) -> bool {
    matches!(get(ws_url, "/readyz").await, Ok((200, _)))
}

/// Least-squares slope of `y` against `x`.
pub fn slope(points: &[(f64, f64)]) -> Option<f64> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let (sx, sy) = points.iter().fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
    let (mx, my) = (sx / n, sy / n);
    let (num, den) = points
        .iter()
        .fold((0.0, 0.0), |(num, den), (x, y)| (num + (x - mx) * (y - my), den + (x - mx).powi(2)));
    (den > 0.0).then(|| num / den)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_and_slopes() {
        let text = "# HELP x\nprocess_open_fds 12\nprocess_open_fds_max 3\nrss{a=\"b\"} 4\n";
        assert_eq!(sample(text, "process_open_fds"), Some(12.0));
        assert_eq!(sample(text, "rss"), None);
        let pts: Vec<(f64, f64)> = (0..10).map(|i| (i as f64, 3.0 * i as f64 + 7.0)).collect();
        assert!((slope(&pts).expect("slope") - 3.0).abs() < 1e-9);
        assert_eq!(slope(&pts[..1]), None);
        assert_eq!(http_base("ws://127.0.0.1:8080/ws").as_deref(), Some("http://127.0.0.1:8080"));
    }
}
