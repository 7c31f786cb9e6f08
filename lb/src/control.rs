//! The client side of the admin API for `keel-lb reload`: systemd's `ExecReload` runs it, so
//! `systemctl reload keel-lb` reports the reload's real outcome instead of a signal's delivery.

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
        "POST /reload HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: keel-lb\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).map_err(io)?;
    let mut raw = Vec::new();
    // Bounded: an answer is a few lines.
    s.take(1 << 20).read_to_end(&mut raw).map_err(io)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .unwrap_or(0);
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

#[cfg(test)]
mod tests {
    use super::*;

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
