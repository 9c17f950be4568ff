//! RESP: Presage spoken as Redis (RESP2, and RESP3 after `HELLO 3`) so that redis-cli,
//! redis-benchmark and Redis client libraries work against any node. Every command goes
//! through the node's [`Client`]: any node serves any key, routed to the shard's leader.
//!
//! - [`parse`]: bounded command parsing and reply encoding.
//! - [`config`]: the listener's limits (`[resp]`).
//! - `keyed`: the commands on keys, each on one key a decision on its value and deadline;
//!   `rmw`: running one as a read-modify-write; `expiry`: TTL and EXPIRE; `hash`: hashes;
//!   `txn`: MULTI/EXEC/WATCH; `info`: INFO's sections; `pipeline`: a connection's commands
//!   run concurrently.
//!
//! **Commands.** PING, ECHO, GET, SET (NX, XX, GET, EX, PX, EXAT, PXAT, KEEPTTL), SETNX,
//! SETEX, PSETEX, GETEX, GETDEL, APPEND, STRLEN, DEL, UNLINK, EXISTS, TYPE, MGET, MSET,
//! INCR, INCRBY, DECR, DECRBY, INCRBYFLOAT, TTL, PTTL, EXPIRE, PEXPIRE, EXPIREAT, PEXPIREAT
//! (NX, XX, GT, LT), EXPIRETIME, PEXPIRETIME, PERSIST, the hash commands (`hash.rs`), MULTI,
//! EXEC, DISCARD, WATCH, UNWATCH, KEYS, SCAN (cursor over the ordered
//! keyspace, MATCH/COUNT), DBSIZE, INFO, COMMAND, CONFIG GET, CLIENT
//! SETNAME/GETNAME/SETINFO/ID/INFO/LIST/KILL, SLOWLOG (`clients.rs`), SELECT 0, HELLO, AUTH,
//! READONLY/READWRITE (the connection's reads are replica reads, or not), QUIT. Unknown commands get Redis's
//! `ERR unknown command`. `tests/e2e/redis_diff.script` runs them against redis-server.
//!
//! **Conditional writes.** NX, XX and SETNX are one conditional write (a check applied with
//! the write, in the Raft log). The commands that read first (INCR, APPEND, SET ... GET,
//! EXPIRE, ...) write conditional on the value *and* deadline they read, and go on from the
//! new state when another writer got in between (`rmw.rs`), so they are atomic and keep the
//! expiry as Redis does.
//!
//! **Cursors.** SCAN's cursors resume on any node (`scan.rs`).
//!
//! **Pipelines.** A connection's commands on keys run concurrently, replies in command order;
//! commands on a key still in flight, and every other command, wait (see `pipeline.rs`).
//!
//! **Errors.** A protocol error (bad framing, a length over a limit) is answered and closes
//! that connection, as Redis does; a bad command is answered and the connection goes on.
//!
//! **Who may call** (design.md §10, Redis 6 ACL wording). TLS with the node's certificate
//! (`redis-cli --tls --cacert ca.crt`); a client certificate naming a listed user logs the
//! connection in as that user. Otherwise only `AUTH`, `HELLO` and `QUIT` are served until
//! `AUTH user pass` (or `AUTH pass` for the user `default`, or `HELLO 3 AUTH user pass`)
//! succeeds: before, `-NOAUTH`; a wrong pair, `-WRONGPASS` (answered later after each
//! failure, logged, the connection closed after `MAX_AUTH_FAILURES`); a write by a
//! read-only user, `-NOPERM`. An insecure node serves plain TCP, everyone read-write.

mod clients;
pub mod config;
mod expiry;
mod glob;
mod hash;
mod info;
mod keyed;
pub mod parse;
mod pipeline;
mod rmw;
mod scan;
mod state;
mod txn;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, BytesMut};
use presage_client::net::{auth_failure_delay, MAX_AUTH_FAILURES};
use presage_client::proto::Role;
use presage_client::{Client, ClientError};
use presage_security::Credentials;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::metrics::Metrics;
pub use config::RespConfig;
pub use glob::glob_match;
use parse::{parse_command, Limits, Reply};
use pipeline::{run_kind, Plan, Run, RunKind, Window};

/// Bytes read from a connection at once.
const READ_CHUNK_BYTES: usize = 64 << 10;

/// A running RESP listener.
pub struct RespServer {
    accept: tokio::task::JoinHandle<()>,
    local_addr: std::net::SocketAddr,
}

impl RespServer {
    /// Stops accepting connections.
    pub fn stop(&self) {
        self.accept.abort();
    }

    /// Where it listens.
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.local_addr
    }
}

/// Who may use RESP.
#[derive(Clone)]
pub struct RespAuth {
    /// The users (`None`: an insecure node, everyone read-write without `AUTH`).
    pub credentials: Option<Arc<Credentials>>,
    /// Failed logins per source address (shared with the node's other listeners).
    pub throttle: Arc<presage_security::throttle::AuthThrottle>,
}

/// Largest unfinished command of a connection that has not logged in, in bytes.
pub const MAX_UNAUTHENTICATED_COMMAND_BYTES: usize = 16 << 10;

/// The user Redis clients log in as with `AUTH password`.
pub const DEFAULT_USER: &str = "default";

struct Shared {
    client: Arc<Client>,
    cfg: RespConfig,
    auth: RespAuth,
    metrics: Arc<Metrics>,
    next_client_id: AtomicU64,
    started: Instant,
    /// Pipeline runs sent as one request per shard, and the commands they carried.
    runs: AtomicU64,
    run_commands: AtomicU64,
    /// Connections accepted, commands answered (INFO stats).
    connections_received: AtomicU64,
    commands_processed: AtomicU64,
    /// Where it listens (INFO).
    local_addr: std::net::SocketAddr,
    /// The connections and the slow log.
    clients: clients::Clients,
}

/// Serves RESP on `listener` through `client`; TLS first with `tls`.
pub fn serve(
    listener: TcpListener,
    client: Arc<Client>,
    cfg: RespConfig,
    auth: RespAuth,
    metrics: Arc<Metrics>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> RespServer {
    let local_addr = listener.local_addr().unwrap_or_else(|_| std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
    let slots = Arc::new(Semaphore::new(cfg.max_connections));
    let shared = Arc::new(Shared {
        client,
        cfg,
        auth,
        metrics,
        next_client_id: AtomicU64::new(1),
        started: Instant::now(),
        runs: AtomicU64::new(0),
        run_commands: AtomicU64::new(0),
        connections_received: AtomicU64::new(0),
        commands_processed: AtomicU64::new(0),
        local_addr,
        clients: clients::Clients::default(),
    });
    let accept = tokio::spawn(async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "RESP listener: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                tracing::warn!(%peer, "RESP listener: too many connections; refused");
                let mut stream = stream;
                let _ = stream.write_all(b"-ERR max number of clients reached\r\n").await;
                continue;
            };
            let (shared, tls) = (Arc::clone(&shared), tls.clone());
            shared.connections_received.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let gauge = shared.metrics.connections.with_label_values(&["resp"]);
                gauge.inc();
                if let Err(e) = accept(stream, peer, &shared, tls).await {
                    tracing::debug!(%peer, error = %e, "RESP connection ended");
                }
                gauge.dec();
                drop(slot);
            });
        }
    });
    RespServer { accept, local_addr }
}

/// One connection's state.
struct Session {
    id: u64,
    resp: u8,
    name: Option<Vec<u8>>,
    /// Who it is logged in as (a user and role), if anyone.
    user: Option<(String, Role)>,
    /// Failed `AUTH`s in a row.
    auth_failures: u32,
    /// Where it comes from (logs).
    peer: std::net::SocketAddr,
    /// MULTI and WATCH.
    txn: txn::Txn,
    /// The priority `CLIENT PRIORITY` set (`None`: its user's default).
    priority: Option<presage_client::Priority>,
    /// `READONLY`: its reads go to any replica (replica reads, still linearizable);
    /// `READWRITE` ends it.
    replica_reads: bool,
}

impl Session {
    /// The priority its commands run at: the one it set, else its user's default.
    fn priority(&self, shared: &Shared) -> presage_client::Priority {
        let default = || {
            let creds = shared.auth.credentials.as_ref();
            creds.zip(self.user.as_ref()).map(|(c, (user, _))| c.user_priority(user)).unwrap_or_default()
        };
        self.priority.unwrap_or_else(default)
    }

    /// `CLIENT PRIORITY [critical|normal|bulk]`: reads or sets it; raising it above normal
    /// takes an operator or a user the users file makes critical (an insecure node: anyone).
    fn set_priority(&mut self, shared: &Shared, args: &[Vec<u8>]) -> Reply {
        let Some(arg) = args.first() else { return Reply::Bulk(self.priority(shared).as_str().into()) };
        let Ok(p) = String::from_utf8_lossy(arg).parse::<presage_client::Priority>() else {
            return Reply::err("CLIENT PRIORITY takes critical, normal or bulk");
        };
        let top = match (&shared.auth.credentials, &self.user) {
            (None, _) => presage_client::Priority::Critical,
            (Some(c), Some((user, role))) => c.top_priority(user, *role),
            (Some(_), None) => presage_client::Priority::Normal,
        };
        if p < top {
            let user = self.user.as_ref().map_or("(none)", |(u, _)| u.as_str());
            return Reply::Error(format!("NOPERM User {user} may not raise its priority above {top}"));
        }
        self.priority = Some(p);
        Reply::ok()
    }
}

/// A TLS handshake must complete within this.
const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

async fn accept(
    stream: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    shared: &Shared,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let Some(tls) = tls else {
        let user = shared.auth.credentials.is_none().then(|| ("anonymous".to_string(), Role::ReadWrite));
        return connection(stream, peer, shared, user).await;
    };
    let stream = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.accept(stream)).await {
        Ok(s) => s?,
        Err(_) => return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out")),
    };
    let cert = stream.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.as_ref().to_vec());
    let user = shared.auth.credentials.as_ref().and_then(|creds| creds.certificate_user(cert.as_deref()));
    connection(stream, peer, shared, user).await
}

async fn connection<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    peer: std::net::SocketAddr,
    shared: &Shared,
    user: Option<(String, Role)>,
) -> std::io::Result<()> {
    let limits = Limits {
        max_bulk_bytes: shared.cfg.max_bulk_bytes,
        max_args: shared.cfg.max_args,
        max_inline_bytes: shared.cfg.max_inline_bytes,
    };
    let mut session = Session {
        id: shared.next_client_id.fetch_add(1, Ordering::Relaxed),
        resp: 2,
        name: None,
        user,
        auth_failures: 0,
        peer,
        txn: txn::Txn::default(),
        priority: None,
        replica_reads: false,
    };
    let registered = shared.clients.register(session.id, peer, shared.local_addr);
    let conn = &registered.conn;
    conn.identify(&session.name, session.user.as_ref().map(|u| u.0.as_str()), session.resp);
    let mut buf = BytesMut::with_capacity(READ_CHUNK_BYTES);
    let mut out = Vec::new();
    let cfg = &shared.cfg;
    // When the unfinished command in `buf` began to arrive.
    let mut command_began: Option<tokio::time::Instant> = None;
    let login_by =
        tokio::time::Instant::now() + std::time::Duration::from_millis(presage_client::net::LOGIN_TIMEOUT_MS);
    // The commands running now, and the run being gathered (see `pipeline`).
    let mut window = Window::new(session.priority(shared));
    let mut run = Run::default();
    loop {
        // Start every complete command in the buffer (pipelining); replies are written once
        // they pass `max-reply-buffer-bytes`, and at the latest when the buffer runs dry.
        loop {
            match parse_command(&buf, &limits) {
                Ok(Some((args, used))) => {
                    buf.advance(used);
                    command_began = None;
                    if args.is_empty() {
                        continue;
                    }
                    let name = upper(&args[0]);
                    conn.started(&name, session.txn.queued_len());
                    let serial = session.user.is_none() || session.txn.active();
                    let plan = if serial { Plan::Serial } else { pipeline::plan(&name, &args) };
                    let refused = refuse(&session, &name);
                    let joins = run_kind(&name, &args).filter(|_| refused.is_none());
                    match (plan, joins) {
                        (Plan::Keyed(keys), Some(kind)) => {
                            let full = run.len() + window.len() >= cfg.max_pipeline_commands;
                            if !run.accepts(kind) || full || window.conflicts(&keys) {
                                start_run(shared, &mut run, &mut window, conn);
                                make_room(&mut window, &keys, cfg.max_pipeline_commands, session.resp, &mut out).await;
                            }
                            run.add(kind, args);
                        }
                        (Plan::Keyed(keys), None) => {
                            start_run(shared, &mut run, &mut window, conn);
                            if let Some(refused) = refused {
                                // In order with the rest, touching no key.
                                window.push(Vec::new(), std::future::ready(refused));
                            } else {
                                make_room(&mut window, &keys, cfg.max_pipeline_commands, session.resp, &mut out).await;
                                window.push(keys, async move {
                                    observed(shared, conn, &args, &name, keyed::keyed(shared, &name, &args)).await
                                });
                            }
                        }
                        (Plan::Serial, _) => {
                            start_run(shared, &mut run, &mut window, conn);
                            while let Some(reply) = window.next().await {
                                reply.encode(session.resp, &mut out);
                            }
                            let quit = name == "QUIT";
                            let (priority, replica) = (session.priority(shared), session.replica_reads);
                            let ran = dispatch(shared, &mut session, &name, &args);
                            let ran = presage_client::with_replica_reads(replica, ran);
                            let reply =
                                presage_client::with_priority(priority, observed(shared, conn, &args, &name, ran))
                                    .await;
                            window.set_priority(session.priority(shared), session.replica_reads);
                            // The session may have a new name, user, protocol or queue now.
                            let who = session.user.as_ref().map(|u| u.0.as_str());
                            conn.identify(&session.name, who, session.resp);
                            conn.started(&name, session.txn.queued_len());
                            reply.encode(session.resp, &mut out);
                            if quit || session.auth_failures >= MAX_AUTH_FAILURES {
                                if !quit {
                                    tracing::warn!(peer = %session.peer, "RESP connection closed after repeated failed AUTH");
                                }
                                stream.write_all(&out).await?;
                                stream.flush().await?;
                                return Ok(());
                            }
                        }
                    }
                    if out.len() >= cfg.max_reply_buffer_bytes {
                        stream.write_all(&out).await?;
                        stream.flush().await?;
                        out.clear();
                    }
                }
                Ok(None) if buf.len() > max_command_bytes(cfg, &session) => {
                    let limit = max_command_bytes(cfg, &session);
                    tracing::info!(peer = %session.peer, bytes = buf.len(), limit, "RESP command too large; closing");
                    let e = format!("Protocol error: command larger than {limit} bytes");
                    start_run(shared, &mut run, &mut window, conn);
                    return close_with(&mut stream, &mut window, &session, &mut out, Reply::err(e)).await;
                }
                Ok(None) => break,
                Err(e) => {
                    start_run(shared, &mut run, &mut window, conn);
                    return close_with(&mut stream, &mut window, &session, &mut out, Reply::err(&e)).await;
                }
            }
        }
        // Nothing more to read for now: the gathered run starts.
        start_run(shared, &mut run, &mut window, conn);
        if !out.is_empty() {
            stream.write_all(&out).await?;
            stream.flush().await?;
            out.clear();
        }
        buf.reserve(READ_CHUNK_BYTES);
        if !window.is_empty() {
            // Replies as they finish, and more commands as they arrive.
            tokio::select! {
                reply = window.next() => {
                    if let Some(reply) = reply {
                        reply.encode(session.resp, &mut out);
                    }
                }
                read = stream.read_buf(&mut buf) => {
                    if read? == 0 {
                        return Ok(());
                    }
                }
                () = conn.killed() => {
                    while let Some(reply) = window.next().await {
                        reply.encode(session.resp, &mut out);
                    }
                    stream.write_all(&out).await?;
                    return stream.flush().await;
                }
            }
            continue;
        }
        // Nothing pending: the idle limit; part of a command: what is left of its time.
        // Until it logs in, at most until the login deadline.
        let now = tokio::time::Instant::now();
        let mut deadline = if buf.is_empty() {
            now + std::time::Duration::from_millis(cfg.idle_timeout_ms)
        } else {
            *command_began.get_or_insert(now) + std::time::Duration::from_millis(cfg.command_timeout_ms)
        };
        if session.user.is_none() {
            deadline = deadline.min(login_by);
        }
        let read = tokio::select! {
            read = tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)) => read,
            () = conn.killed() => return Ok(()),
        };
        match read {
            Ok(Ok(0)) => return Ok(()),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                let why = if buf.is_empty() { "idle" } else { "command not complete in time" };
                tracing::info!(peer = %session.peer, why, "RESP connection closed");
                if !buf.is_empty() {
                    Reply::err("Protocol error: command not complete in time").encode(session.resp, &mut out);
                    stream.write_all(&out).await?;
                    stream.flush().await?;
                }
                return Ok(());
            }
        }
    }
}

/// Waits (writing replies to `out`) until no running command touches `keys` and the window
/// has room.
async fn make_room(window: &mut Window<'_>, keys: &[Vec<u8>], max_commands: usize, resp: u8, out: &mut Vec<u8>) {
    while window.conflicts(keys) || window.len() >= max_commands {
        let Some(outcome) = window.next().await else { break };
        outcome.encode(resp, out);
    }
}

/// Starts the gathered run, if any, in the window: one command alone as itself, more as
/// one request per shard.
fn start_run<'a>(shared: &'a Shared, run: &mut Run, window: &mut Window<'a>, conn: &Arc<clients::Conn>) {
    let Some((kind, mut commands)) = run.take() else { return };
    let keys: Vec<Vec<u8>> = commands.iter().map(|c| c[0].clone()).collect();
    let conn = Arc::clone(conn);
    let name = match kind {
        RunKind::Get => "GET",
        RunKind::Set => "SET",
    };
    if commands.len() == 1 {
        let mut args = commands.pop().unwrap_or_default();
        args.insert(0, name.as_bytes().to_vec());
        window.push(keys, async move { observed(shared, &conn, &args, name, keyed::keyed(shared, name, &args)).await });
        return;
    }
    let label = name.to_ascii_lowercase();
    shared.runs.fetch_add(1, Ordering::Relaxed);
    shared.run_commands.fetch_add(commands.len() as u64, Ordering::Relaxed);
    window.push_run(keys.clone(), async move {
        let started = Instant::now();
        let replies = match kind {
            RunKind::Get => match shared.client.get_many(&keys).await {
                Ok(values) => values.into_iter().map(keyed::string_reply).collect(),
                Err(e) => vec![client_error(&e); keys.len()],
            },
            RunKind::Set => {
                let pairs = commands.into_iter().map(|mut c| (std::mem::take(&mut c[0]), c.pop().unwrap_or_default()));
                let outcomes = shared.client.put_each(pairs.collect()).await;
                outcomes.iter().map(|o| o.as_ref().map_or_else(client_error, |()| Reply::ok())).collect()
            }
        };
        let took = started.elapsed();
        for r in &replies {
            shared.metrics.observe("resp", &label, !matches!(r, Reply::Error(_)), took);
        }
        replies
    });
}

/// Answers the commands still running, then `last` (a protocol error), and ends the
/// connection.
async fn close_with<S: AsyncWrite + Unpin>(
    stream: &mut S,
    window: &mut Window<'_>,
    session: &Session,
    out: &mut Vec<u8>,
    last: Reply,
) -> std::io::Result<()> {
    while let Some(reply) = window.next().await {
        reply.encode(session.resp, out);
    }
    last.encode(session.resp, out);
    stream.write_all(out).await?;
    stream.flush().await
}

fn upper(arg: &[u8]) -> String {
    String::from_utf8_lossy(arg).to_ascii_uppercase()
}

fn wrong_args(name: &str) -> Reply {
    Reply::err(format!("wrong number of arguments for '{}' command", name.to_ascii_lowercase()))
}

fn client_error(e: &ClientError) -> Reply {
    Reply::err(e)
}

/// An integer as Redis reads one: an optional `-`, then digits without a leading zero (or
/// just `0`), fitting in an i64. `+5`, `007` and ` 5` are not integers.
fn int_arg(arg: &[u8]) -> Result<i64, Reply> {
    let digits = arg.strip_prefix(b"-").unwrap_or(arg);
    let canonical = match digits {
        [b'0'] => arg.len() == 1,
        [b'1'..=b'9', rest @ ..] => rest.iter().all(u8::is_ascii_digit),
        _ => false,
    };
    canonical
        .then(|| std::str::from_utf8(arg).ok().and_then(|s| s.parse::<i64>().ok()))
        .flatten()
        .ok_or_else(|| Reply::err("value is not an integer or out of range"))
}

/// Runs `reply` (the command `name`, `args` from `conn`), counts it in the metrics and logs
/// it if slow.
async fn observed(
    shared: &Shared,
    conn: &clients::Conn,
    args: &[Vec<u8>],
    name: &str,
    reply: impl std::future::Future<Output = Reply>,
) -> Reply {
    let started = Instant::now();
    let reply = reply.await;
    let slower_than = std::time::Duration::from_micros(shared.cfg.slowlog_slower_than_us);
    shared.clients.log_if_slow(conn, args, started.elapsed(), slower_than, shared.cfg.slowlog_max_entries);
    shared.commands_processed.fetch_add(1, Ordering::Relaxed);
    let known = is_known(name);
    let label = if known { name.to_ascii_lowercase() } else { "unknown".into() };
    shared.metrics.observe("resp", &label, !matches!(reply, Reply::Error(_)), started.elapsed());
    reply
}

/// Commands this listener knows (metric labels; COMMAND COUNT).
const KNOWN: &[&str] = &[
    "PING",
    "ECHO",
    "GET",
    "SET",
    "DEL",
    "UNLINK",
    "EXISTS",
    "MGET",
    "MSET",
    "SCAN",
    "DBSIZE",
    "INFO",
    "COMMAND",
    "CONFIG",
    "CLIENT",
    "SELECT",
    "HELLO",
    "AUTH",
    "QUIT",
    "INCR",
    "INCRBY",
    "DECR",
    "DECRBY",
    "SETNX",
    "SETEX",
    "PSETEX",
    "GETEX",
    "GETDEL",
    "APPEND",
    "STRLEN",
    "INCRBYFLOAT",
    "TYPE",
    "KEYS",
    "TTL",
    "PTTL",
    "EXPIRETIME",
    "PEXPIRETIME",
    "EXPIRE",
    "PEXPIRE",
    "EXPIREAT",
    "PEXPIREAT",
    "PERSIST",
    "MULTI",
    "EXEC",
    "DISCARD",
    "WATCH",
    "UNWATCH",
    "SLOWLOG",
    "READONLY",
    "READWRITE",
];

/// Does this listener know `name` (upper case)?
fn is_known(name: &str) -> bool {
    KNOWN.contains(&name) || hash::COMMANDS.contains(&name)
}

/// The largest unfinished command `session` may have pending.
fn max_command_bytes(cfg: &RespConfig, session: &Session) -> usize {
    match session.user {
        Some(_) => cfg.max_command_bytes,
        None => cfg.max_command_bytes.min(MAX_UNAUTHENTICATED_COMMAND_BYTES),
    }
}

/// Commands that write (refused to read-only users).
const WRITES: &[&str] = &[
    "SET",
    "SETNX",
    "SETEX",
    "PSETEX",
    "GETEX",
    "GETDEL",
    "APPEND",
    "DEL",
    "UNLINK",
    "MSET",
    "INCR",
    "INCRBY",
    "DECR",
    "DECRBY",
    "INCRBYFLOAT",
    "EXPIRE",
    "PEXPIRE",
    "EXPIREAT",
    "PEXPIREAT",
    "PERSIST",
];

/// The refusal of `name` for this session, if it may not run it: nothing but AUTH, HELLO and
/// QUIT before a login, no write for a read-only user.
fn refuse(s: &Session, name: &str) -> Option<Reply> {
    if s.user.is_none() && !matches!(name, "AUTH" | "HELLO" | "QUIT") {
        return Some(Reply::Error("NOAUTH Authentication required.".into()));
    }
    if let Some((user, role)) = &s.user {
        if (WRITES.contains(&name) || hash::WRITES.contains(&name)) && !role.may_write() {
            return Some(Reply::Error(format!(
                "NOPERM User {user} has no permissions to run the '{}' command",
                name.to_ascii_lowercase()
            )));
        }
    }
    None
}

/// Runs a command alone (the session's, and those spanning the keyspace), or a keyed one.
async fn dispatch(shared: &Shared, s: &mut Session, name: &str, args: &[Vec<u8>]) -> Reply {
    if let Some(refused) = refuse(s, name) {
        s.txn.fail();
        return refused;
    }
    if let Some(reply) = txn::handle(shared, s, name, args).await {
        return reply;
    }
    let argc = args.len();
    match name {
        "PING" => match argc {
            1 => Reply::Simple("PONG".into()),
            2 => Reply::Bulk(args[1].clone()),
            _ => wrong_args(name),
        },
        "ECHO" if argc == 2 => Reply::Bulk(args[1].clone()),
        "QUIT" => Reply::ok(),
        "SELECT" if argc == 2 => match int_arg(&args[1]) {
            Ok(0) => Reply::ok(),
            Ok(_) => Reply::err("DB index is out of range"),
            Err(e) => e,
        },
        "AUTH" => auth(shared, s, &args[1..]).await,
        "HELLO" => hello(shared, s, &args[1..]).await,
        "SCAN" if argc >= 2 => scan::scan(shared, &args[1..]).await,
        "DBSIZE" if argc == 1 => scan::dbsize(shared).await,
        "INFO" => Reply::Bulk(info::info(shared, s.resp, &args[1..]).into_bytes()),
        "KEYS" if argc == 2 => scan::keys(shared, &args[1]).await,
        "COMMAND" => match args.get(1).map(|a| upper(a)).as_deref() {
            None | Some("DOCS") | Some("INFO") => Reply::Array(vec![]),
            Some("COUNT") => Reply::Int((KNOWN.len() + hash::COMMANDS.len()) as i64),
            Some(_) => Reply::err("unknown COMMAND subcommand"),
        },
        "CONFIG" if argc >= 2 && upper(&args[1]) == "GET" => Reply::Array(vec![]),
        "SLOWLOG" if argc >= 2 => {
            operator_only(shared, s, "slowlog").unwrap_or_else(|| shared.clients.slowlog(&args[1..]))
        }
        "READONLY" | "READWRITE" if argc == 1 => {
            s.replica_reads = name == "READONLY";
            Reply::ok()
        }
        "CLIENT" if argc >= 2 => match (upper(&args[1]).as_str(), argc) {
            ("SETNAME", 3) => {
                s.name = Some(args[2].clone());
                Reply::ok()
            }
            ("GETNAME", 2) => s.name.clone().map_or(Reply::Null, Reply::Bulk),
            ("SETINFO", 4) => Reply::ok(),
            ("ID", 2) => Reply::Int(s.id as i64),
            ("PRIORITY", 2 | 3) => s.set_priority(shared, &args[2..]),
            ("INFO", 2) => shared.clients.info(s.id),
            ("LIST", 2) => operator_only(shared, s, "client|list").unwrap_or_else(|| shared.clients.list()),
            ("KILL", n) if n >= 3 => {
                operator_only(shared, s, "client|kill").unwrap_or_else(|| shared.clients.kill(s.id, &args[2..]))
            }
            _ => Reply::err("unknown CLIENT subcommand or wrong number of arguments"),
        },
        _ => keyed::keyed(shared, name, args).await,
    }
}

/// The refusal of an operator's command (`what`, Redis's name for it) to a user who is not
/// an operator; an insecure node refuses nobody.
fn operator_only(shared: &Shared, s: &Session, what: &str) -> Option<Reply> {
    let allowed = shared.auth.credentials.is_none() || s.user.as_ref().is_some_and(|(_, role)| role.may_operate());
    (!allowed).then(|| {
        let user = s.user.as_ref().map_or("(none)", |(u, _)| u.as_str());
        Reply::Error(format!("NOPERM User {user} has no permissions to run the '{what}' command"))
    })
}

async fn auth(shared: &Shared, s: &mut Session, args: &[Vec<u8>]) -> Reply {
    let (user, password) = match args {
        [p] => (DEFAULT_USER.as_bytes(), p),
        [u, p] => (u.as_slice(), p),
        _ => return wrong_args("AUTH"),
    };
    let Some(credentials) = &shared.auth.credentials else {
        return Reply::err(
            "AUTH <password> called without any password configured for the default user. \
             Are you sure your configuration is correct?",
        );
    };
    let user = String::from_utf8_lossy(user).into_owned();
    let password = String::from_utf8_lossy(password).into_owned();
    let too_long = user.len() > presage_client::net::MAX_CREDENTIAL_BYTES
        || password.len() > presage_client::net::MAX_CREDENTIAL_BYTES;
    let checked = if too_long {
        Err(presage_security::credentials::AuthFailure::WrongPass)
    } else {
        Arc::clone(credentials).check_password_off_thread(user.clone(), password).await
    };
    match checked {
        Ok(role) => {
            s.user = Some((user, role));
            // A new user runs at its own default, not at what the previous one set.
            s.priority = None;
            s.auth_failures = 0;
            shared.auth.throttle.succeeded(s.peer.ip());
            Reply::ok()
        }
        Err(e) => {
            s.auth_failures += 1;
            tracing::warn!(peer = %s.peer, user = %user, failures = s.auth_failures, "RESP AUTH failed");
            // The longer of this connection's and this source's waits.
            let wait = auth_failure_delay(s.auth_failures).max(shared.auth.throttle.failed(s.peer.ip()));
            tokio::time::sleep(wait).await;
            Reply::Error(format!("WRONGPASS {e}."))
        }
    }
}

async fn hello(shared: &Shared, s: &mut Session, args: &[Vec<u8>]) -> Reply {
    let mut version = s.resp;
    let mut rest = args;
    if let Some(v) = args.first() {
        match int_arg(v) {
            Ok(v @ (2 | 3)) => version = v as u8,
            Ok(_) => return Reply::Error("NOPROTO unsupported protocol version".into()),
            Err(e) => return e,
        }
        rest = &args[1..];
    }
    while let Some(opt) = rest.first() {
        match (upper(opt).as_str(), rest.len()) {
            ("AUTH", n) if n >= 3 => {
                let r = auth(shared, s, &rest[1..3]).await;
                if matches!(r, Reply::Error(_)) {
                    return r;
                }
                rest = &rest[3..];
            }
            ("SETNAME", n) if n >= 2 => {
                s.name = Some(rest[1].clone());
                rest = &rest[2..];
            }
            _ => return Reply::err("syntax error in HELLO option"),
        }
    }
    if s.user.is_none() {
        return Reply::Error("NOAUTH HELLO must be called with the client already authenticated".into());
    }
    s.resp = version;
    Reply::Map(vec![
        (Reply::text("server"), Reply::text("presage")),
        (Reply::text("version"), Reply::text(env!("CARGO_PKG_VERSION"))),
        (Reply::text("proto"), Reply::Int(i64::from(version))),
        (Reply::text("id"), Reply::Int(s.id as i64)),
        (Reply::text("mode"), Reply::text("standalone")),
        (Reply::text("role"), Reply::text("master")),
        (Reply::text("modules"), Reply::Array(vec![])),
    ])
}

#[cfg(test)]
mod tests {
    use super::int_arg;
    use super::keyed::{Expiry, SetOptions};
    use presage_client::Expect;

    fn opts(args: &[&str]) -> Result<SetOptions, String> {
        let args: Vec<Vec<u8>> = args.iter().map(|a| a.as_bytes().to_vec()).collect();
        SetOptions::parse(&args).map_err(|e| format!("{e:?}"))
    }

    #[test]
    fn integers_are_read_as_redis_reads_them() {
        for (s, want) in [("0", Some(0)), ("-7", Some(-7)), ("42", Some(42)), ("9223372036854775807", Some(i64::MAX))] {
            assert_eq!(int_arg(s.as_bytes()).ok(), want, "{s}");
        }
        for s in ["", "-", "+5", "007", "-0", " 5", "5 ", "1e3", "9223372036854775808", "0x10"] {
            assert!(int_arg(s.as_bytes()).is_err(), "{s:?} is not an integer");
        }
    }

    #[test]
    fn set_options_parse_as_redis_does() {
        let o = opts(&["nx", "px", "100", "GET"]).expect("valid");
        assert_eq!((o.only_if, o.get, o.expiry), (Some(Expect::Absent), true, Some(Expiry::AfterMs(100))));
        assert_eq!(opts(&["EX", "2"]).expect("valid").expiry, Some(Expiry::AfterMs(2_000)));
        assert_eq!(opts(&["EXAT", "2"]).expect("valid").expiry, Some(Expiry::AtMs(2_000)));
        assert_eq!(
            opts(&["XX", "XX", "EX", "1", "EX", "3"]).expect("repeats are allowed").expiry,
            Some(Expiry::AfterMs(3_000))
        );
        for bad in [&["NX", "XX"][..], &["EX", "1", "PXAT", "5"], &["EX"], &["FOO"]] {
            assert!(opts(bad).expect_err("refused").contains("syntax error"), "{bad:?}");
        }
        for bad in [&["EX", "0"][..], &["PX", "-5"], &["EX", "9223372036854775807"]] {
            assert!(opts(bad).expect_err("refused").contains("invalid expire time"), "{bad:?}");
        }
        assert!(opts(&["EX", "ten"]).expect_err("refused").contains("not an integer"));
    }
}
