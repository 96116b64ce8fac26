//! Little-endian packing of bus accesses, shared by the device models.

/// Fills `data` with the low `data.len()` bytes of `value`, little-endian
/// (at most 8 bytes; any further bytes read as zero).
pub(crate) fn fill_le(data: &mut [u8], value: u64) {
    let bytes = value.to_le_bytes();
    for (i, b) in data.iter_mut().enumerate() {
        *b = bytes.get(i).copied().unwrap_or(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_little_endian() {
        let mut d = [0u8; 3];
        fill_le(&mut d, 0x0011_2233);
        assert_eq!(d, [0x33, 0x22, 0x11]);
        let mut long = [0xffu8; 10];
        fill_le(&mut long, 1);
        assert_eq!(long, [1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    }
}
