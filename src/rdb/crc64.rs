//! CRC-64/REDIS (Jones polynomial, reflected), as `crc64.c` in Redis: the RDB trailer and DUMP footer
//! checksum. The `crc` crate carries this exact catalogue algorithm (`CRC_64_REDIS`), table-driven.

use crc::{Crc, Digest, CRC_64_REDIS};

static CRC64: Crc<u64> = Crc::<u64>::new(&CRC_64_REDIS);

/// CRC-64/REDIS of `data`.
pub fn checksum(data: &[u8]) -> u64 {
    CRC64.checksum(data)
}

/// An incremental CRC-64/REDIS.
pub fn digest() -> Digest<'static, u64> {
    CRC64.digest()
}

#[cfg(test)]
mod tests {
    #[test]
    fn check_value_from_redis_crc64_c() {
        // crc64.c's self test: crc64(0, "123456789") == 0xe9c6d914c4b8d9ca.
        assert_eq!(super::checksum(b"123456789"), 0xe9c6_d914_c4b8_d9ca);
    }
}
