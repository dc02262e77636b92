//! Why the admin API could not be reached, in words an operator can act on.
//!
//! A failed request carries its cause several layers down (reqwest → hyper → an I/O error → rustls). This
//! module walks that chain once and names the cause: nothing listening, a host name that does not resolve, a
//! certificate from another CA, plain HTTP spoken to a TLS port or the reverse, a timeout. Each becomes the
//! same exit code (6, unavailable); only the message differs.

use std::error::Error as StdError;
use std::io;

/// What stopped a request before the admin API answered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// Nothing listens at the address (connection refused).
    Refused,
    /// The host name did not resolve.
    UnknownHost,
    /// The server's certificate is not signed by the CA the client trusts.
    UnknownCa,
    /// The certificate is signed by the trusted CA but not for this host name or address.
    WrongName,
    /// The certificate expired or is not valid yet.
    Expired,
    /// Some other certificate problem (rustls' words).
    BadCertificate(String),
    /// `https://` to a port that answers in plain HTTP.
    PlainHttpServer,
    /// `http://` to a port that speaks TLS (or something that is not HTTP): the connection was dropped or
    /// answered with bytes that are not HTTP.
    NotHttp,
    /// No connection within the connect timeout.
    ConnectTimeout,
    /// Connected, but no answer within the request timeout.
    Timeout,
    /// Something else, in the transport's words.
    Other(String),
}

impl Cause {
    /// Classifies a failed request.
    pub fn of(e: &reqwest::Error) -> Cause {
        let chain = chain(e);
        if let Some(tls) = chain.iter().find_map(|c| rustls_error(*c)) {
            return tls_cause(tls);
        }
        let io_kind = chain
            .iter()
            .find_map(|c| c.downcast_ref::<io::Error>().map(io::Error::kind));
        let text = chain
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(": ");
        let lower = text.to_ascii_lowercase();
        if io_kind == Some(io::ErrorKind::ConnectionRefused) {
            Cause::Refused
        } else if lower.contains("failed to lookup address")
            || lower.contains("name or service not known")
            || lower.contains("no address associated")
            || lower.contains("temporary failure in name resolution")
        {
            Cause::UnknownHost
        } else if e.is_timeout() {
            if e.is_connect() {
                Cause::ConnectTimeout
            } else {
                Cause::Timeout
            }
        } else if e.is_connect() {
            Cause::Other(text)
        } else if lower.contains("invalid http version")
            || lower.contains("connection closed before message completed")
            || lower.contains("invalid status")
            || lower.contains("connection reset")
            || lower.contains("received message with invalid")
            || io_kind == Some(io::ErrorKind::ConnectionReset)
            || io_kind == Some(io::ErrorKind::UnexpectedEof)
        {
            Cause::NotHttp
        } else {
            Cause::Other(text)
        }
    }

    /// Whether the request may have reached a server before it failed: then only a request that is safe
    /// to repeat (GET, PUT, DELETE) is tried again at another address. Every other cause failed before a
    /// byte of the request was read (no connection, no name, a refused handshake).
    pub fn reached_server(&self) -> bool {
        matches!(self, Cause::Timeout | Cause::NotHttp | Cause::Other(_))
    }

    /// The cause and what to do about it, for the address `base` (`http://host:port`).
    pub fn describe(&self, base: &str) -> String {
        match self {
            Cause::Refused => format!(
                "connection refused at {base}: no coordinator listens there (is it running? \
                 `meridian dev` starts one on http://127.0.0.1:7070)"
            ),
            Cause::UnknownHost => format!("cannot resolve the host name in {base}"),
            Cause::UnknownCa => format!(
                "{base} presented a certificate that the CA in --cacert/MERIDIAN_CACERT did not sign: \
                 pass the CA of that cluster (certs/ca.pem where it was set up)"
            ),
            Cause::WrongName => format!(
                "{base} presented a certificate for another host name or address: connect by a name \
                 the certificate lists"
            ),
            Cause::Expired => {
                format!("{base} presented a certificate that has expired or is not valid yet")
            }
            Cause::BadCertificate(detail) => {
                format!("{base} presented a certificate that was refused: {detail}")
            }
            Cause::PlainHttpServer => format!(
                "{base} answers in plain HTTP, not TLS: use http:// for it (plain HTTP is only for \
                 loopback, as `meridian dev` serves)"
            ),
            Cause::NotHttp => format!(
                "{base} closed the connection without an HTTP answer: if it serves TLS, use https:// \
                 with --cacert"
            ),
            Cause::ConnectTimeout => format!("no connection to {base} within 5 s"),
            Cause::Timeout => format!("{base} did not answer within 30 s"),
            Cause::Other(detail) => format!("{base}: {detail}"),
        }
    }
}

/// `e` and its causes, outermost first.
fn chain<'a>(e: &'a (dyn StdError + 'static)) -> Vec<&'a (dyn StdError + 'static)> {
    let mut out = vec![e];
    let mut next = e.source();
    while let Some(c) = next {
        out.push(c);
        next = c.source();
    }
    out
}

/// The rustls error in `e`, directly or wrapped in I/O errors (the TLS stream wraps it in one, the
/// connector in another).
fn rustls_error<'a>(e: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    if let Some(tls) = e.downcast_ref::<rustls::Error>() {
        return Some(tls);
    }
    let mut inner: &(dyn StdError + Send + Sync + 'static) =
        e.downcast_ref::<io::Error>()?.get_ref()?;
    loop {
        if let Some(tls) = inner.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        inner = inner.downcast_ref::<io::Error>()?.get_ref()?;
    }
}

fn tls_cause(e: &rustls::Error) -> Cause {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            C::UnknownIssuer | C::BadSignature => Cause::UnknownCa,
            C::NotValidForName | C::NotValidForNameContext { .. } => Cause::WrongName,
            C::Expired
            | C::ExpiredContext { .. }
            | C::NotValidYet
            | C::NotValidYetContext { .. } => Cause::Expired,
            other => Cause::BadCertificate(format!("{other:?}")),
        },
        // A plain-HTTP answer read as a TLS record.
        rustls::Error::InvalidMessage(_) => Cause::PlainHttpServer,
        other => Cause::BadCertificate(other.to_string()),
    }
}
