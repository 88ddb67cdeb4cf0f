//! How the process reaches PostgreSQL: plain TCP to a server on the same host unless the URL
//! asks for TLS.
//!
//! sqlx's default (`sslmode=prefer`) negotiates TLS whenever the server offers it, loopback
//! included, where encryption protects nothing: a profile of `serve` at 16 clients spent 18% of
//! its CPU in rustls (and PostgreSQL its share in OpenSSL). A URL whose host is `localhost`, a
//! loopback address or a Unix socket directory, and which names no `sslmode` (nor `PGSSLMODE` in
//! the environment), is therefore connected with `sslmode=disable`. Any explicit `sslmode`, and
//! every other host, is left as given.

use std::borrow::Cow;
use std::net::IpAddr;

/// `url` with `sslmode=disable` added when it reaches a server on this host and says nothing
/// about TLS; otherwise `url` unchanged (also when it does not parse: connecting reports that).
pub fn loopback_plain(url: &str) -> Cow<'_, str> {
    if std::env::var_os("PGSSLMODE").is_some() {
        return Cow::Borrowed(url);
    }
    let Ok(mut parsed) = url::Url::parse(url) else {
        return Cow::Borrowed(url);
    };
    if !matches!(parsed.scheme(), "postgres" | "postgresql") {
        return Cow::Borrowed(url);
    }
    let mut local = is_local_host(parsed.host_str().unwrap_or(""));
    for (key, value) in parsed.query_pairs() {
        match key.as_ref() {
            "sslmode" | "ssl-mode" => return Cow::Borrowed(url),
            // `?host=/run/postgresql` (a socket directory) or another host overrides the URL's.
            "host" => local = value.starts_with('/') || is_local_host(&value),
            _ => {}
        }
    }
    if !local {
        return Cow::Borrowed(url);
    }
    parsed.query_pairs_mut().append_pair("sslmode", "disable");
    Cow::Owned(parsed.into())
}

/// `localhost`, an empty host (a Unix socket), or a loopback address (IPv6 in brackets or not).
fn is_local_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.is_empty()
        || host.eq_ignore_ascii_case("localhost")
        || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_on_this_host_is_reached_without_tls_unless_the_url_asks() {
        let plain = [
            (
                "postgres://postgres@127.0.0.1:5432/test",
                "postgres://postgres@127.0.0.1:5432/test?sslmode=disable",
            ),
            (
                "postgresql://u:p@localhost/db?application_name=x",
                "postgresql://u:p@localhost/db?application_name=x&sslmode=disable",
            ),
            (
                "postgres://[::1]:5432/db",
                "postgres://[::1]:5432/db?sslmode=disable",
            ),
            (
                "postgres://127.0.0.2/db",
                "postgres://127.0.0.2/db?sslmode=disable",
            ),
            (
                "postgres:///db?host=/run/postgresql",
                "postgres:///db?host=/run/postgresql&sslmode=disable",
            ),
        ];
        for (given, expected) in plain {
            assert_eq!(loopback_plain(given), expected, "{given}");
        }
        let unchanged = [
            "postgres://db.internal:5432/test",
            "postgres://10.0.0.5/test",
            "postgres://127.0.0.1/test?sslmode=require",
            "postgres://localhost/test?ssl-mode=verify-full",
            "postgres://127.0.0.1/test?host=db.internal",
            "sqlite://data/countersign.db",
            "not a url",
        ];
        for given in unchanged {
            assert_eq!(loopback_plain(given), given, "{given}");
        }
    }
}
