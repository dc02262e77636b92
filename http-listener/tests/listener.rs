//! The shared HTTP listener over real TCP on loopback: requests are served, a silent connection is closed
//! after the header timeout, a connection over the cap gets the refusal, and shutdown returns.

use std::time::Duration;

use http_listener::{ConnectionLimits, Refusal, ServeOptions};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Sends `request` and reads until the server closes the connection.
async fn exchange(stream: &mut TcpStream, request: &str) -> std::io::Result<String> {
    stream.write_all(request.as_bytes()).await?;
    let mut out = Vec::new();
    stream.read_to_end(&mut out).await?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

const GET: &str = "GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n";

#[tokio::test]
async fn serves_closes_silent_connections_refuses_over_the_cap_and_stops() -> anyhow::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new().route("/", axum::routing::get(|| async { "hello" }));
    let options = ServeOptions {
        header_read_timeout: Duration::from_secs(2),
        limits: Some(ConnectionLimits {
            max_connections: 1,
            max_per_source: 1,
            refusal: Refusal {
                content_type: "text/plain",
                body: "busy".into(),
            },
        }),
        ..ServeOptions::new("test")
    };
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(http_listener::serve(
        listener,
        options,
        move |_| app.clone(),
        shutdown.clone(),
    ));

    // Accepted in order: the first connection, which says nothing, takes the only place.
    let mut silent = TcpStream::connect(addr).await?;
    let mut over = TcpStream::connect(addr).await?;
    let refused = exchange(&mut over, GET).await?;
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    assert!(refused.contains("retry-after: 1\r\n"), "{refused}");
    assert!(refused.ends_with("busy"), "{refused}");

    // The header timeout closes it without a word, and its place serves again.
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), silent.read_to_end(&mut rest)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "the silent connection was not closed: {closed:?} {rest:?}"
    );
    let served = testkit::eventually_async(
        "the freed place serves",
        Duration::from_secs(10),
        || async {
            let mut stream = TcpStream::connect(addr).await.ok()?;
            let answer = exchange(&mut stream, GET).await.ok()?;
            answer.starts_with("HTTP/1.1 200").then_some(answer)
        },
    )
    .await?;
    assert!(served.ends_with("hello"), "{served}");

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), server).await??;
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "still accepting after shutdown"
    );
    Ok(())
}
