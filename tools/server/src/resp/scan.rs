//! The commands that walk the keyspace: SCAN with cursors that any node resumes, and KEYS
//! and DBSIZE (bounded by `resp.max-dbsize-keys`).
//!
//! Redis clients read a SCAN cursor as a 64-bit integer (go-redis and redis-rs parse it as
//! one), but Presage scans by key, and a key does not fit in 64 bits. So a page that stops
//! before the end stores the key to resume from as a record of the keyspace: the cursor is a
//! random number, the record `CURSOR_PREFIX + number` holds the key and expires after
//! [`CURSOR_TTL_MS`]. Any node reads it back, so a client whose connection pool moves to
//! another node, or whose node restarts, goes on where it was. The cost is one replicated
//! write per page that is not the last.
//!
//! The records live in a range of the ordinary keyspace that SCAN, KEYS and DBSIZE skip
//! ([`is_cursor_record`]); native clients' scans see them until they expire. SCAN keeps
//! Redis's guarantee: a key present for the whole iteration is returned at least once.

use presage_client::BatchOp;

use super::parse::Reply;
use super::{client_error, glob_match, int_arg, keyed, upper, Shared};

/// Where the cursor records are (an unlikely prefix for an application's keys).
const CURSOR_PREFIX: &[u8] = b"\xfe\xffpresage-resp-scan-cursor/";

/// How long a cursor can be resumed after its page, in milliseconds.
pub const CURSOR_TTL_MS: u64 = 600_000;

/// Is `key` a cursor record (hidden from SCAN, KEYS and DBSIZE)?
pub(super) fn is_cursor_record(key: &[u8]) -> bool {
    key.starts_with(CURSOR_PREFIX)
}

/// The first key after every cursor record.
fn after_cursor_records() -> Vec<u8> {
    let mut end = CURSOR_PREFIX.to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

fn record_key(cursor: u64) -> Vec<u8> {
    [CURSOR_PREFIX, &cursor.to_be_bytes()].concat()
}

/// `SCAN cursor [MATCH pattern] [COUNT n] [TYPE string|hash]`.
pub(super) async fn scan(shared: &Shared, args: &[Vec<u8>]) -> Reply {
    let Ok(cursor) = std::str::from_utf8(&args[0]).unwrap_or("x").parse::<u64>() else {
        return Reply::err("invalid cursor");
    };
    let mut pattern: Option<Vec<u8>> = None;
    let mut type_filter: Option<String> = None;
    let mut count = 10usize;
    let mut rest = &args[1..];
    while let [opt, value, tail @ ..] = rest {
        match upper(opt).as_str() {
            "MATCH" => pattern = Some(value.clone()),
            "COUNT" => match int_arg(value) {
                Ok(n) if n > 0 => count = (n as usize).min(shared.cfg.max_scan_count),
                _ => return Reply::err("syntax error"),
            },
            "TYPE" => type_filter = Some(String::from_utf8_lossy(value).to_ascii_lowercase()),
            _ => return Reply::err("syntax error"),
        }
        rest = tail;
    }
    if !rest.is_empty() {
        return Reply::err("syntax error");
    }
    let start = if cursor == 0 {
        Vec::new()
    } else {
        match shared.client.get(&record_key(cursor)).await {
            Ok(Some(k)) => k,
            Ok(None) => return Reply::err("invalid cursor (unknown, or not resumed within 10 minutes)"),
            Err(e) => return client_error(&e),
        }
    };
    let page = match page(shared, start, count).await {
        Ok(p) => p,
        Err(e) => return e,
    };
    let next = match page.last() {
        Some((k, _)) if page.len() == count => {
            let mut after = k.clone();
            after.push(0);
            let next = loop {
                let n = rand::random::<u64>() >> 1;
                if n != 0 {
                    break n;
                }
            };
            let put = BatchOp::PutExpiring { key: record_key(next), value: after, ttl_ms: CURSOR_TTL_MS };
            if let Err(e) = shared.client.batch(vec![put]).await {
                return client_error(&e);
            }
            next
        }
        _ => 0,
    };
    let keys = page
        .into_iter()
        .filter(|(_, v)| type_filter.as_deref().is_none_or(|t| keyed::type_name(Some(v)) == t))
        .map(|(k, _)| k)
        .filter(|k| pattern.as_deref().is_none_or(|p| glob_match(p, k)))
        .map(Reply::Bulk)
        .collect();
    Reply::Array(vec![Reply::text(next.to_string()), Reply::Array(keys)])
}

/// Up to `count` pairs from `start` on, in key order, stepping over the cursor records.
async fn page(shared: &Shared, start: Vec<u8>, count: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>, Reply> {
    let skip_to = after_cursor_records();
    let mut out = Vec::new();
    if start.as_slice() < CURSOR_PREFIX {
        out = shared.client.scan(&start, Some(CURSOR_PREFIX), count).await.map_err(|e| client_error(&e))?;
        if out.len() == count {
            return Ok(out);
        }
    }
    let from = if start < skip_to { skip_to } else { start };
    let rest = shared.client.scan(&from, None, count - out.len()).await.map_err(|e| client_error(&e))?;
    out.extend(rest);
    Ok(out)
}

/// Calls `each` with every key of the keyspace in order, a page at a time, until it has seen
/// more than `resp.max-dbsize-keys` (an error naming `what`, the command).
async fn every_key(shared: &Shared, what: &str, mut each: impl FnMut(Vec<u8>)) -> Result<(), Reply> {
    let mut seen = 0usize;
    let mut from = Vec::new();
    let page_keys = 1_000;
    loop {
        let page = shared.client.scan(&from, None, page_keys).await.map_err(|e| client_error(&e))?;
        seen += page.len();
        if seen > shared.cfg.max_dbsize_keys {
            let limit = shared.cfg.max_dbsize_keys;
            return Err(Reply::err(format!("{what} stopped after {limit} keys (resp.max-dbsize-keys); use SCAN")));
        }
        let full = page.len() == page_keys;
        let mut last = None;
        for (k, _) in page {
            last = Some(k.clone());
            if !is_cursor_record(&k) {
                each(k);
            }
        }
        match last {
            Some(mut k) if full => {
                k.push(0);
                from = k;
            }
            _ => return Ok(()),
        }
    }
}

pub(super) async fn dbsize(shared: &Shared) -> Reply {
    let mut count = 0i64;
    match every_key(shared, "DBSIZE", |_| count += 1).await {
        Ok(()) => Reply::Int(count),
        Err(e) => e,
    }
}

/// `KEYS pattern`: the matching keys, in key order, within `resp.max-dbsize-keys`.
pub(super) async fn keys(shared: &Shared, pattern: &[u8]) -> Reply {
    let mut found = Vec::new();
    match every_key(shared, "KEYS", |k| {
        if glob_match(pattern, &k) {
            found.push(Reply::Bulk(k));
        }
    })
    .await
    {
        Ok(()) => Reply::Array(found),
        Err(e) => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_records_sort_together_and_the_range_after_them_excludes_them() {
        let a = record_key(1);
        let b = record_key(u64::MAX >> 1);
        assert!(is_cursor_record(&a) && is_cursor_record(&b));
        let end = after_cursor_records();
        assert!(a.as_slice() >= CURSOR_PREFIX && b < end && a < end);
        assert!(!is_cursor_record(&end) && !is_cursor_record(b"user:1"));
    }
}
