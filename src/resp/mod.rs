//! RESP: the replication-stream command decoder, the reply parser every client connection uses, and command
//! encoding.
//!
//! Decoders share one convention: `Result<Option<(…)>, RespError>` where `Ok(None)` means "need more bytes"
//! (never an error, whatever the split of the input) and every [`RespError`] carries the offset of the
//! offending byte. Nothing here allocates in proportion to a length or count read from the input before the
//! bytes it announces have arrived.
//!
//! - [`CommandDecoder`]: one command at a time from a master's stream, with exact byte lengths (see
//!   [`command`] for the accepted grammar and the incremental contract); [`Command`] is a decoded command that
//!   owns its bytes (zero-copy) and gives its arguments as slices of them.
//! - [`parse_reply`] / [`skip_reply`] / [`reply_error`]: replies, RESP2 and RESP3 (see [`reply`]).
//! - [`encode_command`] and the piecewise writers ([`write_array_header`], [`write_bulk`],
//!   [`write_bulk_int`], [`write_bulk_header`] + [`write_bulk_end`]).
//!
//! Redis' `src/networking.c` (`processMultibulkBuffer`) and `src/resp_parser.c` are the reference for what a
//! server accepts.

pub mod command;
mod encode;
mod error;
pub mod reply;

#[cfg(test)]
mod tests;

pub use command::{
    Args, Command, CommandDecoder, DEFAULT_MAX_BULK_LEN, INLINE_ARGS, MAX_MULTIBULK_COUNT,
};
pub use encode::{
    bulk_len, command_len, decimal_len, encode_command, write_array_header, write_bulk,
    write_bulk_end, write_bulk_header, write_bulk_int, write_decimal,
};
pub use error::{RespError, ShownByte};
pub use reply::{
    array_items, parse_reply, parse_reply_bytes, reply_error, skip_reply, Reply, ReplyError,
    ReplyHead, MAX_DEPTH,
};
