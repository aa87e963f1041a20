//! Helpers for this crate's unit tests.

/// `n` pseudo-random bytes (xorshift): cheap, repeatable, not compressible.
pub fn noise(n: usize, seed: u32) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}
