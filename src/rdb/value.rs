//! Placeholder: full value decoding.
use super::RdbError;
use bytes::Bytes;

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    String(Bytes),
}

pub fn decode_value(_rdb_type: u8, _payload: &[u8]) -> Result<Value, RdbError> {
    Err(RdbError::Corrupt { what: "value", offset: 0, detail: "not implemented".into() })
}
