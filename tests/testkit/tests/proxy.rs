//! The fault proxy against a small echo server: pass, cut, black hole,
//! redirect, and its connection bound.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use testkit::FaultProxy;

/// An echo server that prefixes every line with `tag`; runs until the test ends.
fn echo_server(tag: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut writer = stream.try_clone().unwrap();
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { return };
                    if writeln!(writer, "{tag}:{line}").is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

fn connect(proxy: &FaultProxy) -> (TcpStream, BufReader<TcpStream>) {
    let stream = TcpStream::connect(proxy.addr()).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let reader = BufReader::new(stream.try_clone().unwrap());
    (stream, reader)
}

/// Sends a line and reads the answer; `None` when the connection is closed.
fn ask(stream: &mut TcpStream, reader: &mut BufReader<TcpStream>, line: &str) -> Option<String> {
    writeln!(stream, "{line}").ok()?;
    let mut answer = String::new();
    match reader.read_line(&mut answer) {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(answer.trim_end().to_owned()),
    }
}

/// Whether the peer closed the connection (EOF or reset) within 5 s.
fn closed(stream: &mut TcpStream) -> bool {
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(n) => n == 0,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

fn wait_for(mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !condition() {
        assert!(Instant::now() < deadline, "condition not met within 5 s");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn pass_relays_both_ways() {
    let proxy = FaultProxy::start(echo_server("a")).unwrap();
    let (mut stream, mut reader) = connect(&proxy);
    assert_eq!(ask(&mut stream, &mut reader, "hello").as_deref(), Some("a:hello"));
    // More than one buffer's worth in one go arrives whole and in order.
    let long = "x".repeat(100_000);
    assert_eq!(ask(&mut stream, &mut reader, &long), Some(format!("a:{long}")));
    assert_eq!(proxy.open_connections(), 1);
    drop((stream, reader));
    wait_for(|| proxy.open_connections() == 0);
}

#[test]
fn cut_closes_open_connections_and_refuses_new_ones_until_pass() {
    let proxy = FaultProxy::start(echo_server("a")).unwrap();
    let (mut stream, mut reader) = connect(&proxy);
    assert_eq!(ask(&mut stream, &mut reader, "1").as_deref(), Some("a:1"));

    proxy.cut();
    assert!(closed(&mut stream), "an open connection is closed by cut");
    let (mut during, mut during_reader) = connect(&proxy);
    assert_eq!(
        ask(&mut during, &mut during_reader, "2"),
        None,
        "new connections are closed"
    );
    wait_for(|| proxy.open_connections() == 0);

    proxy.pass();
    let (mut after, mut after_reader) = connect(&proxy);
    assert_eq!(ask(&mut after, &mut after_reader, "3").as_deref(), Some("a:3"));
}

#[test]
fn blackhole_holds_connections_silently_and_pass_resumes_them() {
    let proxy = FaultProxy::start(echo_server("a")).unwrap();
    let (mut stream, mut reader) = connect(&proxy);
    assert_eq!(ask(&mut stream, &mut reader, "1").as_deref(), Some("a:1"));

    proxy.blackhole();
    stream.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    writeln!(stream, "2").unwrap();
    let mut line = String::new();
    let err = reader
        .read_line(&mut line)
        .expect_err("no answer in a black hole");
    assert!(
        matches!(
            err.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        "{err}"
    );
    // A new connection is accepted (connect succeeds) and never answered.
    let (mut held, mut held_reader) = connect(&proxy);
    held.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    writeln!(held, "new").unwrap();
    assert!(held_reader.read_line(&mut String::new()).is_err());
    assert_eq!(proxy.open_connections(), 2, "nothing was closed");

    proxy.pass();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    held.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert_eq!(
        line.trim_end(),
        "a:2",
        "the held bytes are delivered after the black hole"
    );
    let mut line = String::new();
    held_reader.read_line(&mut line).unwrap();
    assert_eq!(line.trim_end(), "a:new");
}

#[test]
fn redirect_closes_old_connections_and_sends_new_ones_to_the_new_upstream() {
    let b = echo_server("b");
    let proxy = FaultProxy::start(echo_server("a")).unwrap();
    let (mut old, mut old_reader) = connect(&proxy);
    assert_eq!(ask(&mut old, &mut old_reader, "1").as_deref(), Some("a:1"));

    proxy.redirect(b).unwrap();
    assert_eq!(proxy.upstream(), b);
    assert!(closed(&mut old), "connections to the old upstream are closed");
    let (mut new, mut new_reader) = connect(&proxy);
    assert_eq!(ask(&mut new, &mut new_reader, "2").as_deref(), Some("b:2"));

    // Redirect also ends a cut.
    proxy.cut();
    proxy.redirect(b).unwrap();
    let (mut again, mut again_reader) = connect(&proxy);
    assert_eq!(ask(&mut again, &mut again_reader, "3").as_deref(), Some("b:3"));
}

#[test]
fn connections_are_bounded_and_dropping_the_proxy_closes_everything() {
    let proxy = FaultProxy::start(echo_server("a")).unwrap();
    proxy.blackhole();
    let mut streams: Vec<TcpStream> = (0..FaultProxy::MAX_CONNECTIONS + 10)
        .map(|_| TcpStream::connect(proxy.addr()).unwrap())
        .collect();
    wait_for(|| proxy.accepted() == (FaultProxy::MAX_CONNECTIONS + 10) as u64);
    assert_eq!(proxy.open_connections(), FaultProxy::MAX_CONNECTIONS);
    let addr = proxy.addr();
    drop(proxy);
    for stream in &mut streams {
        assert!(closed(stream));
    }
    assert!(
        TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err(),
        "nothing listens after the drop"
    );
}

#[tokio::test]
async fn works_inside_a_tokio_runtime() {
    let proxy = FaultProxy::start(echo_server("a")).unwrap();
    let mut stream = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(b"hi\n").await.unwrap();
    let mut buf = [0u8; 5];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"a:hi\n");
    proxy.cut();
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0);
}
