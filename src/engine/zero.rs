//! Telling zero bytes: a dense (Full) snapshot stores its zero pages as data, and memory
//! that only fills serves those as the zero page instead of copying them.

/// Whether every byte of `bytes` is zero (a word at a time where aligned).
pub(crate) fn is_zero(bytes: &[u8]) -> bool {
    // SAFETY: any bit pattern is a valid u128; `align_to` splits off the unaligned ends.
    let (head, words, tail) = unsafe { bytes.align_to::<u128>() };
    head.iter().all(|&b| b == 0) && tail.iter().all(|&b| b == 0) && words.iter().all(|&w| w == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_nonzero_byte_is_seen() {
        let mut page = vec![0u8; 4096 + 3];
        assert!(is_zero(&page));
        for at in [0, 1, 17, 2048, 4095, 4098] {
            page[at] = 1;
            assert!(!is_zero(&page), "byte {at}");
            assert!(!is_zero(&page[1..]) || at == 0, "byte {at}, unaligned");
            page[at] = 0;
        }
    }
}
