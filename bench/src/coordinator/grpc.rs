//! gRPC clients for both systems under test, built like the HTTPS ones (rustls with the ring provider,
//! trusting only the given CA) but speaking HTTP/2: one channel, so one connection, per simulated client.
//!
//! etcd's native API (`etcdserverpb.KV/Put`) is called with two message types written here from etcd's
//! published wire format (field numbers only); Meridian's through `meridian.v1.ProjectService`.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tonic::transport::{Channel, Endpoint, Uri};

/// etcd's `PutRequest`: the fields the benchmark sets.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct EtcdPutRequest {
    #[prost(bytes = "vec", tag = "1")]
    pub(crate) key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub(crate) value: Vec<u8>,
}

/// etcd's `PutResponse`; the benchmark reads nothing from it.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct EtcdPutResponse {}

/// The path of etcd's put method.
pub(crate) const ETCD_PUT: &str = "/etcdserverpb.KV/Put";

/// Opens a channel to `127.0.0.1:port` over TLS with `tls` (ALPN `h2`). The connection is made on first use.
pub(crate) fn channel(
    tls: Arc<rustls::ClientConfig>,
    port: u16,
    timeout: Duration,
) -> anyhow::Result<Channel> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .context("the gRPC endpoint")?
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true);
    let connector = tower::service_fn(move |_: Uri| {
        let tls = tls.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            let name = ServerName::IpAddress(addr.ip().into());
            let stream = tokio_rustls::TlsConnector::from(tls)
                .connect(name, tcp)
                .await?;
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    });
    Ok(endpoint.connect_with_connector_lazy(connector))
}
