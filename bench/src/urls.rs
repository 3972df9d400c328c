//! Service URLs, re-pointed at the counting proxies.

use std::net::{SocketAddr, ToSocketAddrs};

use crate::Res;

/// `scheme://[user@]host:port/...` -> (index of host start, index of host end).
fn authority_span(url: &str) -> Res<(usize, usize)> {
    let start = url.find("://").ok_or("URL without scheme")? + 3;
    let rest = &url[start..];
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let host_start = rest[..end].rfind('@').map(|i| i + 1).unwrap_or(0);
    Ok((start + host_start, start + end))
}

pub fn url_addr(url: &str, default_port: u16) -> Res<SocketAddr> {
    let (a, b) = authority_span(url)?;
    let hp = &url[a..b];
    let hp = if hp.contains(':') {
        hp.to_owned()
    } else {
        format!("{hp}:{default_port}")
    };
    Ok(hp
        .to_socket_addrs()?
        .find(SocketAddr::is_ipv4)
        .ok_or("no IPv4 address")?)
}

pub fn url_with_addr(url: &str, addr: SocketAddr) -> Res<String> {
    let (a, b) = authority_span(url)?;
    Ok(format!("{}{addr}{}", &url[..a], &url[b..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_is_replaced_and_credentials_and_query_kept() {
        let addr: SocketAddr = "127.0.0.1:6000".parse().unwrap();
        assert_eq!(
            url_with_addr("postgres://u:p@db.example:5432/chat?sslmode=disable", addr).unwrap(),
            "postgres://u:p@127.0.0.1:6000/chat?sslmode=disable"
        );
        assert_eq!(
            url_addr("redis://127.0.0.1", 6379).unwrap(),
            "127.0.0.1:6379".parse().unwrap()
        );
    }
}
