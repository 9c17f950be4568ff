//! The limits every data request is checked against before it is served: system keys
//! refused, key and value sizes, batch and get-many sizes, checks per batch.

use presage_client::proto::{BatchOp, ProtoError, Request};
use presage_shardmgr::is_system_key;

use super::ServerConfig;

/// Checks one batch may carry (each is decided on the Raft thread at apply, looking through
/// the apply round's writes).
pub const MAX_CHECKS_PER_BATCH: usize = 16;

/// Value bytes one `GetMany` answer holds at most (at least one value is answered; the
/// caller asks again for the rest). Well under the smallest `max-frame-bytes` a value fits.
pub const MAX_GET_MANY_ANSWER_BYTES: usize = 1 << 20;

/// Refuses system keys and requests over the limits.
pub(super) fn check_request(request: &Request, cfg: &ServerConfig) -> Result<(), ProtoError> {
    let value_ok = |v: &[u8]| -> Result<(), ProtoError> {
        if v.len() > presage_client::client::MAX_VALUE_BYTES {
            return Err(ProtoError::Invalid(format!(
                "value of {} bytes > {}",
                v.len(),
                presage_client::client::MAX_VALUE_BYTES
            )));
        }
        Ok(())
    };
    let key_ok = |k: &[u8]| -> Result<(), ProtoError> {
        if is_system_key(k) {
            return Err(ProtoError::ReservedKey);
        }
        if k.len() > presage_engine::MAX_KEY_BYTES {
            return Err(ProtoError::Invalid(format!("key of {} bytes > {}", k.len(), presage_engine::MAX_KEY_BYTES)));
        }
        Ok(())
    };
    match request {
        Request::Get { key, .. } | Request::GetWithExpiry { key, .. } | Request::Delete { key, .. } => key_ok(key),
        Request::GetMany { keys, .. } => {
            if keys.is_empty() || keys.len() > cfg.max_batch_ops {
                return Err(ProtoError::Invalid(format!("a get-many asks for 1..={} keys", cfg.max_batch_ops)));
            }
            keys.iter().try_for_each(|k| key_ok(k))
        }
        Request::Put { key, value, .. } => {
            key_ok(key)?;
            value_ok(value)
        }
        Request::Batch { ops, .. } => {
            if ops.is_empty() || ops.len() > cfg.max_batch_ops {
                return Err(ProtoError::Invalid(format!("a batch holds 1..={} ops", cfg.max_batch_ops)));
            }
            if !ops.iter().any(BatchOp::is_write) {
                return Err(ProtoError::Invalid("a batch of checks only writes nothing".into()));
            }
            if ops.iter().filter(|op| !op.is_write()).count() > MAX_CHECKS_PER_BATCH {
                return Err(ProtoError::Invalid(format!("a batch holds at most {MAX_CHECKS_PER_BATCH} checks")));
            }
            ops.iter().try_for_each(|op| {
                key_ok(op.key())?;
                if let BatchOp::PutExpiring { ttl_ms: 0, .. } = op {
                    return Err(ProtoError::Invalid("a time to live is at least 1 ms".into()));
                }
                op.value().map_or(Ok(()), value_ok)
            })
        }
        Request::Scan { start, end, max_keys, max_bytes, .. } => {
            key_ok(start)?;
            if end.as_ref().is_some_and(|e| e.as_slice() <= start.as_slice()) {
                return Err(ProtoError::Invalid("scan end is not after its start".into()));
            }
            if *max_keys == 0 || *max_keys > cfg.max_scan_keys || *max_bytes == 0 || *max_bytes > cfg.max_scan_bytes {
                return Err(ProtoError::Invalid(format!(
                    "scan limits must be 1..={} pairs and 1..={} bytes",
                    cfg.max_scan_keys, cfg.max_scan_bytes
                )));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}
