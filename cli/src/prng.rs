//! A tiny seeded PRNG (splitmix64) and the page permutations built from it, so random
//! orders are the same in every run and for both engines.

/// splitmix64: small, fast, and good enough to shuffle page indices.
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator starting from `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..bound` (`bound > 0`), with negligible bias for page counts.
    pub fn below(&mut self, bound: u64) -> u64 {
        ((self.next_u64() as u128 * bound as u128) >> 64) as u64
    }
}

/// The pages `start..end` in a random order fixed by `seed` (Fisher–Yates).
pub fn permutation(start: u32, end: u32, seed: u64) -> Vec<u32> {
    let mut pages: Vec<u32> = (start..end).collect();
    let mut rng = SplitMix64::new(seed);
    for i in (1..pages.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        pages.swap(i, j);
    }
    pages
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_is_a_permutation_and_seeded() {
        let a = permutation(10, 1010, 7);
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (10..1010).collect::<Vec<_>>());
        assert_eq!(a, permutation(10, 1010, 7));
        assert_ne!(a, permutation(10, 1010, 8));
        assert_ne!(a, sorted);
    }
}
