//! A TCP fault proxy: tests put it between outboxd and a server (PostgreSQL,
//! a broker) to cause outages without stopping the server.
//!
//! ```text
//!  client ──▶ FaultProxy::addr() ──▶ upstream (the server)
//! ```
//!
//! The proxy is in one of three modes, switched at any time:
//!
//! * **pass** (the start): every connection is relayed to the current upstream.
//! * **cut**: every open connection is closed at once (both sides), and new
//!   connections are accepted and closed straight away: a crashed server or
//!   a reset network. [`FaultProxy::pass`] ends the outage.
//! * **black hole**: nothing is relayed any more and nothing is closed:
//!   open connections stop moving bytes in both directions (what was
//!   written stays in kernel buffers), new connections are accepted and
//!   never answered. A partition: the client only notices by its own
//!   timeouts. [`FaultProxy::pass`] heals it, and held connections resume
//!   where they stopped (new ones are connected upstream then).
//!
//! [`FaultProxy::redirect`] points it at another upstream (a failover): open
//! connections are closed, as a server switch would close them, and new ones
//! go to the new upstream.
//!
//! It runs on its own threads with blocking sockets, so it works the same in
//! `#[test]` and `#[tokio::test]` (of any flavour), and needs no runtime.
//! It is bounded: at most [`FaultProxy::MAX_CONNECTIONS`] connections at a
//! time (more are closed when accepted), two threads and two 16 KiB buffers
//! per connection. Dropping it closes everything and stops its threads.
//!
//! ```no_run
//! # fn example(cluster: &testkit::PgCluster, other: &testkit::PgCluster) -> Result<(), testkit::HarnessError> {
//! use testkit::FaultProxy;
//!
//! let proxy = FaultProxy::start(("127.0.0.1", cluster.port()))?;
//! let url = format!("postgresql://postgres@127.0.0.1:{}/postgres", proxy.port());
//! // ... start the client on `url` ...
//! proxy.cut(); // outage
//! proxy.pass(); // back
//! proxy.blackhole(); // partition
//! proxy.redirect(("127.0.0.1", other.port()))?; // failover
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::HarnessError;

/// How long a connection to the upstream may take before the client's
/// connection is closed (as a refused connection would be).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Bytes read at once per direction.
const BUFFER: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Pass,
    Cut,
    Blackhole,
}

#[derive(Debug)]
struct State {
    mode: Mode,
    upstream: SocketAddr,
    /// Bumped by `cut` and `redirect`: connections of an older generation
    /// are closed, never relayed again.
    generation: u64,
    /// Both sockets of each open connection, so they can be closed from here.
    open: HashMap<u64, Vec<TcpStream>>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    stopping: AtomicBool,
    accepted: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits while black-holed. True when the connection of `generation`
    /// may relay now; false when it must close.
    fn wait_passing(&self, generation: u64) -> bool {
        let mut state = self.lock();
        loop {
            if self.stopping.load(Ordering::Relaxed) || state.generation != generation {
                return false;
            }
            match state.mode {
                Mode::Pass => return true,
                Mode::Cut => return false,
                Mode::Blackhole => {
                    state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
                }
            }
        }
    }

    /// Closes every open connection and starts a new generation.
    fn close_all(state: &mut State) {
        state.generation += 1;
        for sockets in state.open.values() {
            for socket in sockets {
                let _ = socket.shutdown(Shutdown::Both);
            }
        }
    }

    fn forget(&self, id: u64) {
        if let Some(sockets) = self.lock().open.remove(&id) {
            for socket in sockets {
                let _ = socket.shutdown(Shutdown::Both);
            }
        }
    }
}

/// A TCP proxy that can pass, cut, black-hole and redirect. See the module notes.
#[derive(Debug)]
pub struct FaultProxy {
    shared: Arc<Shared>,
    addr: SocketAddr,
    acceptor: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// Connections open at once; further ones are closed when accepted.
    pub const MAX_CONNECTIONS: usize = 64;

    /// Listens on a free port of 127.0.0.1 and relays to `upstream`.
    pub fn start(upstream: impl ToSocketAddrs) -> Result<Self, HarnessError> {
        let upstream = resolve(upstream)?;
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                mode: Mode::Pass,
                upstream,
                generation: 0,
                open: HashMap::new(),
            }),
            changed: Condvar::new(),
            stopping: AtomicBool::new(false),
            accepted: AtomicU64::new(0),
        });
        let acceptor = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name(format!("fault-proxy-{}", addr.port()))
                .spawn(move || accept_loop(&listener, &shared))?
        };
        Ok(FaultProxy {
            shared,
            addr,
            acceptor: Some(acceptor),
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port clients connect to (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Relays again: ends a cut or a black hole.
    pub fn pass(&self) {
        self.set_mode(Mode::Pass, false);
    }

    /// Closes every open connection now, and every new one until [`FaultProxy::pass`].
    pub fn cut(&self) {
        self.set_mode(Mode::Cut, true);
    }

    /// Stops relaying without closing anything, until [`FaultProxy::pass`].
    pub fn blackhole(&self) {
        self.set_mode(Mode::Blackhole, false);
    }

    /// Sends new connections to `upstream` and closes the open ones (they
    /// belong to the old upstream); the mode becomes pass.
    pub fn redirect(&self, upstream: impl ToSocketAddrs) -> Result<(), HarnessError> {
        let upstream = resolve(upstream)?;
        let mut state = self.shared.lock();
        state.upstream = upstream;
        state.mode = Mode::Pass;
        Shared::close_all(&mut state);
        drop(state);
        self.shared.changed.notify_all();
        Ok(())
    }

    /// The current upstream.
    pub fn upstream(&self) -> SocketAddr {
        self.shared.lock().upstream
    }

    /// Connections open now (relayed or held).
    pub fn open_connections(&self) -> usize {
        self.shared.lock().open.len()
    }

    /// Connections accepted since the start.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::Relaxed)
    }

    fn set_mode(&self, mode: Mode, close: bool) {
        let mut state = self.shared.lock();
        state.mode = mode;
        if close {
            Shared::close_all(&mut state);
        }
        drop(state);
        self.shared.changed.notify_all();
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::Relaxed);
        {
            let mut state = self.shared.lock();
            Shared::close_all(&mut state);
        }
        self.shared.changed.notify_all();
        // Wake the acceptor blocked in accept().
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn resolve(addr: impl ToSocketAddrs) -> Result<SocketAddr, HarnessError> {
    addr.to_socket_addrs()?
        .next()
        .ok_or_else(|| HarnessError::new("the proxy's upstream address resolves to nothing"))
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    let mut next_id = 0u64;
    for client in listener.incoming() {
        if shared.stopping.load(Ordering::Relaxed) {
            return;
        }
        let Ok(client) = client else {
            // Out of descriptors or the like: back off instead of spinning.
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        shared.accepted.fetch_add(1, Ordering::Relaxed);
        let _ = client.set_nodelay(true);
        let mut state = shared.lock();
        if state.mode == Mode::Cut || state.open.len() >= FaultProxy::MAX_CONNECTIONS {
            drop(state);
            let _ = client.shutdown(Shutdown::Both);
            continue;
        }
        let Ok(registered) = client.try_clone() else {
            continue;
        };
        next_id += 1;
        let id = next_id;
        let generation = state.generation;
        state.open.insert(id, vec![registered]);
        drop(state);
        let worker = Arc::clone(shared);
        let spawned = std::thread::Builder::new()
            .name(format!("fault-proxy-conn-{id}"))
            .spawn(move || {
                connection(&worker, id, generation, client);
                worker.forget(id);
            });
        if spawned.is_err() {
            shared.forget(id);
        }
    }
}

/// One client connection: wait out a black hole, connect upstream, relay
/// both ways until either side closes or the proxy closes it.
fn connection(shared: &Arc<Shared>, id: u64, generation: u64, client: TcpStream) {
    if !shared.wait_passing(generation) {
        return;
    }
    let upstream_addr = shared.lock().upstream;
    let Ok(upstream) = TcpStream::connect_timeout(&upstream_addr, CONNECT_TIMEOUT) else {
        return;
    };
    let _ = upstream.set_nodelay(true);
    {
        let mut state = shared.lock();
        if state.generation != generation {
            return;
        }
        let (Some(sockets), Ok(registered)) = (state.open.get_mut(&id), upstream.try_clone()) else {
            return;
        };
        sockets.push(registered);
    }
    let (Ok(client_read), Ok(upstream_read)) = (client.try_clone(), upstream.try_clone()) else {
        return;
    };
    let back = {
        let shared = Arc::clone(shared);
        std::thread::Builder::new()
            .name(format!("fault-proxy-conn-{id}-back"))
            .spawn(move || relay(&shared, generation, upstream_read, client))
    };
    relay(shared, generation, client_read, upstream);
    if let Ok(back) = back {
        let _ = back.join();
    }
}

/// Copies `from` to `to` while the mode lets it; closes both at the end, so
/// the other direction ends too.
fn relay(shared: &Shared, generation: u64, mut from: TcpStream, mut to: TcpStream) {
    let mut buf = vec![0u8; BUFFER];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if !shared.wait_passing(generation) || to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
