//! The client side of the admin API: `keel-lb reload` (systemd's `ExecReload` runs it, so
//! `systemctl reload keel-lb` reports the reload's real outcome instead of a signal's delivery),
//! `keel-lb status` and `keel-lb backend ...`. It finds the admin listener and token in the config.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(
        "the config has no admin listener: send SIGHUP instead (systemctl kill -s HUP keel-lb)"
    )]
    NoAdmin,
    #[error("{0}")]
    Token(String),
    #[error("admin API at {addr}: {err}")]
    Io {
        addr: SocketAddr,
        err: std::io::Error,
    },
    #[error("admin API at {addr} answered {status}: {body}")]
    Refused {
        addr: SocketAddr,
        status: u16,
        body: String,
    },
}

/// The address to reach a listener on: a wildcard listener is reached on loopback.
fn reach(listen: SocketAddr) -> SocketAddr {
    let mut a = listen;
    if a.ip().is_unspecified() {
        a.set_ip(match a {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    a
}

/// `POST /reload` to the running keel-lb that `cfg` describes; its answer on success.
pub fn reload(cfg: &Config, timeout: Duration) -> Result<String, ControlError> {
    request(cfg, "POST", "/reload", "", timeout)
}

/// The status snapshot (`GET /v1/status`).
pub fn status(cfg: &Config, timeout: Duration) -> Result<crate::status::Snapshot, ControlError> {
    let body = request(cfg, "GET", "/v1/status", "", timeout)?;
    let addr = reach(cfg.admin.as_ref().ok_or(ControlError::NoAdmin)?.listen);
    serde_json::from_str(&body).map_err(|e| ControlError::Io {
        addr,
        err: std::io::Error::other(format!("not a status snapshot: {e}")),
    })
}

/// `POST /v1/backends/<pool>/<addr>` with `body` (`state=drain`, `weight=3`).
pub fn backend(
    cfg: &Config,
    pool: &str,
    addr: &str,
    body: &str,
    timeout: Duration,
) -> Result<String, ControlError> {
    let path = format!("/v1/backends/{}/{}", encode(pool), encode(addr));
    request(cfg, "POST", &path, body, timeout)
}

/// Percent-encodes everything but unreserved characters and `:` (an IPv6 address's brackets
/// and a pool name's oddities travel safely).
fn encode(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:".contains(&b) {
            o.push(b as char);
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}

/// One request to the admin API with the token (when configured); the body of a 200 answer.
fn request(
    cfg: &Config,
    method: &str,
    path: &str,
    body: &str,
    timeout: Duration,
) -> Result<String, ControlError> {
    let admin = cfg.admin.as_ref().ok_or(ControlError::NoAdmin)?;
    let token = match &admin.token {
        Some(t) => Some(t.read().map_err(ControlError::Token)?),
        None => None,
    };
    let addr = reach(admin.listen);
    let io = |err| ControlError::Io { addr, err };
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(io)?;
    s.set_read_timeout(Some(timeout)).map_err(io)?;
    s.set_write_timeout(Some(timeout)).map_err(io)?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: keel-lb\r\n{auth}Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).map_err(io)?;
    let mut raw = Vec::new();
    // Bounded: a status snapshot of the largest config is a few MiB.
    s.take(64 << 20).read_to_end(&mut raw).map_err(io)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .unwrap_or(0);
    let chunked = head
        .lines()
        .any(|l| l.to_ascii_lowercase().starts_with("transfer-encoding:") && l.contains("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    if status == 200 {
        Ok(body.trim().to_string())
    } else {
        Err(ControlError::Refused {
            addr,
            status,
            body: body.trim().to_string(),
        })
    }
}

/// A chunked body's data (hyper chunks large bodies).
fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    // Bounded by the body: every round consumes a chunk or stops.
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16) else {
            break;
        };
        // `get`: a size that does not fall on a character boundary ends it, never panics.
        let (Some(chunk), Some(after)) = (rest.get(..n), rest.get(n..)) else {
            break;
        };
        if n == 0 {
            break;
        }
        out.push_str(chunk);
        s = after.strip_prefix("\r\n").unwrap_or(after);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_pools_and_ipv6_addresses_for_the_path() {
        assert_eq!(encode("api"), "api");
        assert_eq!(encode("[2001:db8::1]:443"), "%5B2001:db8::1%5D:443");
        assert_eq!(encode("a/b c"), "a%2Fb%20c");
    }

    #[test]
    fn dechunks_a_chunked_body() {
        assert_eq!(
            dechunk("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
            "hello world"
        );
    }

    #[test]
    fn a_wildcard_listener_is_reached_on_loopback() {
        assert_eq!(
            reach("0.0.0.0:9100".parse().unwrap()),
            "127.0.0.1:9100".parse().unwrap()
        );
        assert_eq!(
            reach("[::]:9100".parse().unwrap()),
            "[::1]:9100".parse().unwrap()
        );
        assert_eq!(
            reach("198.18.0.1:9100".parse().unwrap()),
            "198.18.0.1:9100".parse().unwrap()
        );
    }
}
