//! What the client refuses before sending: keys in the system range or too long, values
//! too large, a time to live under 1 ms.

use std::time::Duration;

use presage_shardmgr::is_system_key;

use super::{ClientError, MAX_KEY_BYTES, MAX_VALUE_BYTES};
use crate::proto::BatchOp;

pub(super) fn check_key(key: &[u8]) -> Result<(), ClientError> {
    if is_system_key(key) {
        return Err(ClientError::Invalid("keys starting with 0xff are reserved for the system".into()));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(ClientError::Invalid(format!("key of {} bytes > {MAX_KEY_BYTES}", key.len())));
    }
    Ok(())
}

pub(super) fn check_value(value: &[u8]) -> Result<(), ClientError> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(ClientError::Invalid(format!("value of {} bytes > {MAX_VALUE_BYTES}", value.len())));
    }
    Ok(())
}

pub(super) fn check_op(op: &BatchOp) -> Result<(), ClientError> {
    check_key(op.key())?;
    if let BatchOp::PutExpiring { ttl_ms: 0, .. } = op {
        return Err(ClientError::Invalid("a time to live is at least 1 ms".into()));
    }
    op.value().map_or(Ok(()), check_value)
}

pub(super) fn ttl_ms(ttl: Duration) -> Result<u64, ClientError> {
    match u64::try_from(ttl.as_millis()) {
        Ok(ms) if ms > 0 => Ok(ms),
        _ => Err(ClientError::Invalid(format!("time to live {ttl:?}: must be 1 ms or more"))),
    }
}
