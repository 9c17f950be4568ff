//! The listener's connections and its slow log: CLIENT LIST, CLIENT INFO, CLIENT KILL and
//! SLOWLOG GET/LEN/RESET.
//!
//! Each connection registers a [`Conn`] for its life (a guard removes it); the connection
//! alone updates it (name, user, last command), so the only shared lock is the registry's,
//! taken when a connection comes and goes and by CLIENT LIST/KILL. CLIENT KILL marks the
//! connection and wakes it: it closes before its next read, after answering what it runs.
//!
//! The slow log keeps the last `resp.slowlog-max-entries` commands that took longer than
//! `resp.slowlog-slower-than-us` (a run of pipelined GETs or SETs sent as one request is not
//! logged command by command), each with at most [`SLOWLOG_MAX_ARGS`] arguments of at most
//! [`SLOWLOG_MAX_ARG_BYTES`] bytes, as Redis trims them.
//!
//! **Who may call** (design.md §10): CLIENT LIST and KILL, and SLOWLOG, show or end other
//! users' connections and commands, so they need a user with the `operator` role (or an
//! insecure node); CLIENT INFO shows only the caller's own connection.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::parse::Reply;

/// Arguments of a command kept in the slow log (the last one says how many more there were).
pub const SLOWLOG_MAX_ARGS: usize = 32;
/// Bytes of an argument kept in the slow log.
pub const SLOWLOG_MAX_ARG_BYTES: usize = 128;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One connection as CLIENT LIST shows it.
pub(super) struct Conn {
    pub(super) id: u64,
    addr: std::net::SocketAddr,
    local: std::net::SocketAddr,
    connected: Instant,
    state: Mutex<ConnState>,
    killed: AtomicBool,
    kill: tokio::sync::Notify,
}

#[derive(Default)]
struct ConnState {
    name: Option<Vec<u8>>,
    user: Option<String>,
    last_cmd: String,
    last_active: Option<Instant>,
    resp: u8,
    multi: Option<usize>,
}

impl Conn {
    /// Notes a command's start (its name, upper case, with `multi` commands queued if in
    /// MULTI): no allocation once the name buffer has grown.
    pub(super) fn started(&self, cmd: &str, multi: Option<usize>) {
        let mut s = lock(&self.state);
        s.last_cmd.clear();
        s.last_cmd.extend(cmd.chars().map(|c| c.to_ascii_lowercase()));
        s.last_active = Some(Instant::now());
        s.multi = multi;
    }

    /// Notes who the connection is: its name, user and protocol (after a command that may
    /// change them: AUTH, HELLO, CLIENT SETNAME).
    pub(super) fn identify(&self, name: &Option<Vec<u8>>, user: Option<&str>, resp: u8) {
        let mut s = lock(&self.state);
        s.name.clone_from(name);
        if s.user.as_deref() != user {
            s.user = user.map(str::to_string);
        }
        s.resp = resp;
    }

    /// Has CLIENT KILL ended it?
    pub(super) fn is_killed(&self) -> bool {
        self.killed.load(Ordering::Relaxed)
    }

    /// Completes when CLIENT KILL ends it.
    pub(super) async fn killed(&self) {
        while !self.is_killed() {
            self.kill.notified().await;
        }
    }

    fn line(&self) -> String {
        let s = lock(&self.state);
        let now = Instant::now();
        let idle = s.last_active.map_or(now - self.connected, |t| now - t);
        format!(
            "id={} addr={} laddr={} name={} age={} idle={} flags={} db=0 multi={} user={} resp={} cmd={}\n",
            self.id,
            self.addr,
            self.local,
            String::from_utf8_lossy(s.name.as_deref().unwrap_or_default()),
            (now - self.connected).as_secs(),
            idle.as_secs(),
            if s.multi.is_some() { "x" } else { "N" },
            s.multi.map_or(-1, |n| n as i64),
            s.user.as_deref().unwrap_or(""),
            s.resp.max(2),
            if s.last_cmd.is_empty() { "NULL" } else { &s.last_cmd },
        )
    }
}

/// One slow command.
struct SlowEntry {
    id: u64,
    at_unix_s: u64,
    took_us: u64,
    args: Vec<Vec<u8>>,
    addr: std::net::SocketAddr,
    name: Vec<u8>,
}

/// The connections of a listener and its slow log.
#[derive(Default)]
pub(super) struct Clients {
    by_id: Mutex<BTreeMap<u64, Arc<Conn>>>,
    slow: Mutex<VecDeque<SlowEntry>>,
    next_slow_id: AtomicU64,
}

/// Removes its connection from the registry when dropped.
pub(super) struct Registered<'a> {
    clients: &'a Clients,
    pub(super) conn: Arc<Conn>,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        lock(&self.clients.by_id).remove(&self.conn.id);
    }
}

impl Clients {
    /// Registers connection `id` from `addr` to `local` for as long as the guard lives.
    pub(super) fn register(&self, id: u64, addr: std::net::SocketAddr, local: std::net::SocketAddr) -> Registered<'_> {
        let conn = Arc::new(Conn {
            id,
            addr,
            local,
            connected: Instant::now(),
            state: Mutex::new(ConnState::default()),
            killed: AtomicBool::new(false),
            kill: tokio::sync::Notify::new(),
        });
        lock(&self.by_id).insert(id, Arc::clone(&conn));
        Registered { clients: self, conn }
    }

    /// `CLIENT LIST`: one line per connection, by id.
    pub(super) fn list(&self) -> Reply {
        let conns: Vec<Arc<Conn>> = lock(&self.by_id).values().cloned().collect();
        Reply::Bulk(conns.iter().map(|c| c.line()).collect::<String>().into_bytes())
    }

    /// `CLIENT INFO`: the line of connection `id`.
    pub(super) fn info(&self, id: u64) -> Reply {
        let conn = lock(&self.by_id).get(&id).cloned();
        conn.map_or(Reply::Null, |c| Reply::Bulk(c.line().into_bytes()))
    }

    /// `CLIENT KILL addr` (the old form: `OK`, or an error if no such client) or
    /// `CLIENT KILL [ID id] [ADDR addr] [USER user] [SKIPME yes|no]` (the count), asked on
    /// connection `me`.
    pub(super) fn kill(&self, me: u64, args: &[Vec<u8>]) -> Reply {
        let text = |a: &[u8]| String::from_utf8_lossy(a).into_owned();
        if let [addr] = args {
            let n = self.kill_where(|c| c.addr.to_string() == text(addr));
            return if n > 0 { Reply::ok() } else { Reply::err("No such client") };
        }
        let (mut id, mut addr, mut user, mut skip_me) = (None, None, None, true);
        let mut rest = args;
        while let [opt, value, tail @ ..] = rest {
            match String::from_utf8_lossy(opt).to_ascii_uppercase().as_str() {
                "ID" => match text(value).parse::<u64>() {
                    Ok(n) => id = Some(n),
                    Err(_) => return Reply::err("client-id should be greater than 0"),
                },
                "ADDR" => addr = Some(text(value)),
                "USER" => user = Some(text(value)),
                "SKIPME" => match text(value).to_ascii_lowercase().as_str() {
                    "yes" => skip_me = true,
                    "no" => skip_me = false,
                    _ => return Reply::err("syntax error"),
                },
                _ => return Reply::err("syntax error"),
            }
            rest = tail;
        }
        if !rest.is_empty() || args.is_empty() {
            return Reply::err("syntax error");
        }
        let n = self.kill_where(|c| {
            id.is_none_or(|i| c.id == i)
                && addr.as_ref().is_none_or(|a| c.addr.to_string() == *a)
                && user.as_ref().is_none_or(|u| lock(&c.state).user.as_deref() == Some(u.as_str()))
                && !(skip_me && c.id == me)
        });
        Reply::Int(n as i64)
    }

    fn kill_where(&self, pick: impl Fn(&Conn) -> bool) -> usize {
        let picked: Vec<Arc<Conn>> = lock(&self.by_id).values().filter(|c| pick(c)).cloned().collect();
        for c in &picked {
            c.killed.store(true, Ordering::Relaxed);
            c.kill.notify_one();
            tracing::info!(id = c.id, addr = %c.addr, "RESP connection killed by CLIENT KILL");
        }
        picked.len()
    }

    /// Logs `args` (a command from `conn`) if it `took` longer than `slower_than`.
    pub(super) fn log_if_slow(
        &self,
        conn: &Conn,
        args: &[Vec<u8>],
        took: Duration,
        slower_than: Duration,
        max_entries: usize,
    ) {
        if took < slower_than {
            return;
        }
        let mut kept: Vec<Vec<u8>> = Vec::with_capacity(args.len().min(SLOWLOG_MAX_ARGS));
        for (i, a) in args.iter().enumerate() {
            if i + 1 == SLOWLOG_MAX_ARGS && args.len() > SLOWLOG_MAX_ARGS {
                kept.push(format!("... ({} more arguments)", args.len() - i).into_bytes());
                break;
            }
            if a.len() > SLOWLOG_MAX_ARG_BYTES {
                let mut cut = a[..SLOWLOG_MAX_ARG_BYTES].to_vec();
                cut.extend_from_slice(format!("... ({} more bytes)", a.len() - SLOWLOG_MAX_ARG_BYTES).as_bytes());
                kept.push(cut);
            } else {
                kept.push(a.clone());
            }
        }
        let entry = SlowEntry {
            id: self.next_slow_id.fetch_add(1, Ordering::Relaxed),
            at_unix_s: presage_replication::value::wall_now_ms() / 1_000,
            took_us: u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
            args: kept,
            addr: conn.addr,
            name: lock(&conn.state).name.clone().unwrap_or_default(),
        };
        let mut slow = lock(&self.slow);
        slow.push_front(entry);
        slow.truncate(max_entries);
    }

    /// `SLOWLOG GET [count]` (default 10, -1 all), `SLOWLOG LEN`, `SLOWLOG RESET`.
    pub(super) fn slowlog(&self, args: &[Vec<u8>]) -> Reply {
        let sub = args.first().map(|a| String::from_utf8_lossy(a).to_ascii_uppercase());
        match (sub.as_deref(), args.len()) {
            (Some("LEN"), 1) => Reply::Int(lock(&self.slow).len() as i64),
            (Some("RESET"), 1) => {
                lock(&self.slow).clear();
                Reply::ok()
            }
            (Some("GET"), 1 | 2) => {
                let count = match args.get(1).map(|a| super::int_arg(a)) {
                    None => 10,
                    Some(Ok(-1)) => usize::MAX,
                    Some(Ok(n)) if n >= 0 => n as usize,
                    _ => return Reply::err("count should be greater than or equal to -1"),
                };
                let slow = lock(&self.slow);
                Reply::Array(
                    slow.iter()
                        .take(count)
                        .map(|e| {
                            Reply::Array(vec![
                                Reply::Int(e.id as i64),
                                Reply::Int(e.at_unix_s as i64),
                                Reply::Int(i64::try_from(e.took_us).unwrap_or(i64::MAX)),
                                Reply::Array(e.args.iter().cloned().map(Reply::Bulk).collect()),
                                Reply::Bulk(e.addr.to_string().into_bytes()),
                                Reply::Bulk(e.name.clone()),
                            ])
                        })
                        .collect(),
                )
            }
            _ => Reply::err("unknown subcommand or wrong number of arguments for 'slowlog' command"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn kill_marks_the_chosen_connections_only() {
        let clients = Clients::default();
        let (a, b) = (clients.register(1, addr(1000), addr(6379)), clients.register(2, addr(1001), addr(6379)));
        b.conn.started("GET", None);
        b.conn.identify(&None, Some("app"), 2);
        let by_user = clients.kill(1, &[b"USER".to_vec(), b"app".to_vec()]);
        assert_eq!(by_user, Reply::Int(1));
        assert!(b.conn.is_killed() && !a.conn.is_killed());
        assert_eq!(clients.kill(1, &[b"ID".to_vec(), b"1".to_vec()]), Reply::Int(0), "SKIPME yes by default");
        assert_eq!(clients.kill(1, &[b"127.0.0.1:1000".to_vec()]), Reply::ok());
        assert!(a.conn.is_killed());
        drop(a);
        let Reply::Bulk(list) = clients.list() else { panic!("a bulk list") };
        let list = String::from_utf8(list).expect("text");
        assert!(list.starts_with("id=2 addr=127.0.0.1:1001") && list.contains("user=app") && list.contains("cmd=get"));
        assert_eq!(list.lines().count(), 1, "a dropped connection leaves the list");
    }

    #[test]
    fn the_slow_log_keeps_the_newest_slow_commands_trimmed() {
        let clients = Clients::default();
        let c = clients.register(1, addr(1000), addr(6379));
        let ms = Duration::from_millis;
        clients.log_if_slow(&c.conn, &[b"GET".to_vec(), b"k".to_vec()], ms(1), ms(10), 2);
        assert_eq!(clients.slowlog(&[b"LEN".to_vec()]), Reply::Int(0), "a fast command is not logged");
        let many: Vec<Vec<u8>> = (0..40).map(|i| vec![b'a'; 100 + i]).collect();
        for _ in 0..3 {
            clients.log_if_slow(&c.conn, &many, ms(20), ms(10), 2);
        }
        assert_eq!(clients.slowlog(&[b"LEN".to_vec()]), Reply::Int(2), "at most max-entries");
        let Reply::Array(entries) = clients.slowlog(&[b"GET".to_vec(), b"1".to_vec()]) else { panic!("entries") };
        let Reply::Array(fields) = &entries[0] else { panic!("an entry") };
        assert_eq!(fields[0], Reply::Int(2), "the newest first");
        let Reply::Array(args) = &fields[3] else { panic!("args") };
        assert_eq!(args.len(), SLOWLOG_MAX_ARGS);
        assert!(matches!(&args[31], Reply::Bulk(b) if b.starts_with(b"... (9 more")));
        assert!(matches!(&args[30], Reply::Bulk(b) if b.len() > SLOWLOG_MAX_ARG_BYTES && b.ends_with(b"more bytes)")));
        assert_eq!(clients.slowlog(&[b"RESET".to_vec()]), Reply::ok());
        assert_eq!(clients.slowlog(&[b"LEN".to_vec()]), Reply::Int(0));
    }
}
