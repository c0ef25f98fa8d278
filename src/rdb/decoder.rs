//! Placeholder: the streaming decoder (being written).
use super::{Event, RdbError};
use bytes::BytesMut;

#[derive(Clone, Debug)]
pub struct DecoderOptions {
    pub max_entry_bytes: usize,
    pub chunk_elements: usize,
    pub verify_checksum: bool,
}

impl Default for DecoderOptions {
    fn default() -> Self {
        DecoderOptions {
            max_entry_bytes: 16 << 20,
            chunk_elements: 1024,
            verify_checksum: true,
        }
    }
}

pub struct Decoder {
    #[allow(dead_code)]
    opts: DecoderOptions,
}

impl Decoder {
    pub fn new(opts: DecoderOptions) -> Self {
        Decoder { opts }
    }
    pub fn decode(&mut self, _buf: &mut BytesMut) -> Result<Option<Event>, RdbError> {
        Ok(None)
    }
    pub fn finish(&self) -> Result<(), RdbError> {
        Ok(())
    }
    pub fn needed(&self) -> usize {
        1
    }
}
