//! DNS rebinding protection while no API keys are configured.
//!
//! A web page can make a browser send requests to a name that its author
//! points at 127.0.0.1: the browser then talks to a local, unauthenticated
//! Sluice as if it were the page's own site. The browser still sends the page's
//! host name in `Host`, so without keys only these hosts are served (the port
//! is ignored):
//!
//! - loopback names (`localhost`, `*.localhost`) and addresses (127.0.0.0/8, `::1`);
//! - the listen address; when listening on every interface (`0.0.0.0`, `::`),
//!   any IP address, since any of the machine's addresses may be it and a
//!   rebinding page always sends a name;
//! - the names given with `--allowed-hosts`.
//!
//! A request without a `Host` (HTTP/1.0, or a hand-made request) is served:
//! browsers always send one, so it cannot come from a rebinding page.

use std::net::IpAddr;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::ApiError;

/// The hosts a request may name when no API keys are configured.
#[derive(Debug, Clone)]
pub struct AllowedHosts {
    listen: IpAddr,
    /// Lower case, without a trailing dot.
    names: Vec<String>,
}

impl AllowedHosts {
    /// Loopback, `listen`, and `extra` names (`--allowed-hosts`).
    pub fn new(listen: IpAddr, extra: &[String]) -> Self {
        Self {
            listen,
            names: extra.iter().map(|name| normalize(name)).collect(),
        }
    }

    /// Whether a `Host` header's value (`name`, `name:port`, `[v6]:port`) is
    /// allowed.
    pub fn allows(&self, host: &str) -> bool {
        let host = normalize(strip_port(host));
        if let Ok(ip) = host.trim_matches(['[', ']']).parse::<IpAddr>() {
            return ip.to_canonical().is_loopback()
                || ip == self.listen
                || self.listen.is_unspecified()
                || self.names.contains(&host);
        }
        host == "localhost" || host.ends_with(".localhost") || self.names.contains(&host)
    }
}

fn normalize(host: &str) -> String {
    host.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// `host:port` → `host`; `[::1]:80` → `[::1]`; a bare IPv6 address stays whole.
fn strip_port(host: &str) -> &str {
    if let Some(end) = host.find(']') {
        return &host[..=end];
    }
    match host.rsplit_once(':') {
        Some((name, _port)) if !name.contains(':') => name,
        _ => host,
    }
}

/// Refuses, with 403, a request whose `Host` is not allowed, when the service
/// runs without API keys.
pub(crate) async fn require_allowed_host(
    State(app): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let Some(allowed) = &app.allowed_hosts else {
        return next.run(request).await;
    };
    let host = match request.headers().get(header::HOST) {
        Some(value) => value.to_str().ok(),
        // HTTP/2 carries the host in the URI's authority instead.
        None => Some(request.uri().host().unwrap_or("")),
    };
    match host {
        Some(host) if host.trim().is_empty() || allowed.allows(host) => next.run(request).await,
        _ => ApiError::forbidden(
            "this host name is not served without API keys (a guard against DNS rebinding): \
             use localhost or the listen address, add the name with --allowed-hosts, \
             or configure --api-keys-file",
        )
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loopback_only() -> AllowedHosts {
        AllowedHosts::new("127.0.0.1".parse().unwrap(), &[])
    }

    #[test]
    fn loopback_names_and_addresses_pass_whatever_the_port() {
        let hosts = loopback_only();
        for host in [
            "localhost",
            "localhost:8000",
            "LOCALHOST.:8000",
            "app.localhost:1",
            "127.0.0.1",
            "127.0.0.1:8000",
            "127.1.2.3:80",
            "[::1]:8000",
            "[::1]",
            "::1",
            "[::ffff:127.0.0.1]:80",
        ] {
            assert!(hosts.allows(host), "{host}");
        }
    }

    #[test]
    fn other_names_and_addresses_are_refused() {
        let hosts = loopback_only();
        for host in [
            "evil.example",
            "evil.example:8000",
            "localhost.evil.example",
            "10.0.0.5:8000",
            "[fe80::1]:80",
            "127.0.0.1.evil.example",
            "",
        ] {
            assert!(!hosts.allows(host), "{host}");
        }
    }

    #[test]
    fn the_listen_address_and_extra_names_pass() {
        let hosts = AllowedHosts::new("10.0.0.5".parse().unwrap(), &["Sluice.Internal".to_owned()]);
        assert!(hosts.allows("10.0.0.5:8000"));
        assert!(hosts.allows("sluice.internal:8000"));
        assert!(hosts.allows("sluice.internal."));
        assert!(!hosts.allows("10.0.0.6:8000"));
        assert!(!hosts.allows("other.internal"));
    }

    #[test]
    fn every_address_passes_when_listening_on_every_interface() {
        let hosts = AllowedHosts::new("0.0.0.0".parse().unwrap(), &[]);
        assert!(hosts.allows("192.168.1.20:8000"));
        assert!(hosts.allows("[2001:db8::1]:8000"));
        assert!(!hosts.allows("evil.example"));
    }
}
