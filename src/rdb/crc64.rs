//! CRC-64/REDIS (Jones polynomial, reflected), as `crc64.c` in Redis: the RDB trailer and DUMP footer
//! checksum. The `crc` crate carries this exact catalogue algorithm (`CRC_64_REDIS`); we use its
//! slice-by-16 tables (16 × 256 × 8 bytes = 32 KiB, built at compile time), which process 16 bytes per
//! step instead of one: every byte of every snapshot and every RESTORE payload goes through here.

use crc::{Crc, Table, CRC_64_REDIS};

/// The incremental state (slice-by-16).
pub type Digest = crc::Digest<'static, u64, Table<16>>;

static CRC64: Crc<u64, Table<16>> = Crc::<u64, Table<16>>::new(&CRC_64_REDIS);

/// CRC-64/REDIS of `data`.
pub fn checksum(data: &[u8]) -> u64 {
    CRC64.checksum(data)
}

/// An incremental CRC-64/REDIS.
pub fn digest() -> Digest {
    CRC64.digest()
}

#[cfg(test)]
mod tests {
    #[test]
    fn check_value_from_redis_crc64_c() {
        // crc64.c's self test: crc64(0, "123456789") == 0xe9c6d914c4b8d9ca.
        assert_eq!(super::checksum(b"123456789"), 0xe9c6_d914_c4b8_d9ca);
    }

    #[test]
    fn slice_by_16_equals_byte_at_a_time_at_every_split() {
        let bytewise = crc::Crc::<u64>::new(&crc::CRC_64_REDIS);
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + i / 3) as u8).collect();
        for len in [0, 1, 15, 16, 17, 31, 32, 33, 999, 1000] {
            assert_eq!(
                super::checksum(&data[..len]),
                bytewise.checksum(&data[..len]),
                "len {len}"
            );
        }
        for split in [0, 1, 7, 16, 100, 999] {
            let mut d = super::digest();
            d.update(&data[..split]);
            d.update(&data[split..]);
            assert_eq!(d.finalize(), bytewise.checksum(&data), "split {split}");
        }
    }
}
