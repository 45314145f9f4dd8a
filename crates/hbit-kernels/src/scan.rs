//! The validation scan shared by every check that names the first bad value of a large slice
//! (non-finite activations and weights, invalid 2-bit codes): these run on every projection
//! input of a decode step and over every byte of a model at load, so they must vectorize.

/// Values per chunk: each is tested without an early exit (so the test vectorizes); only a
/// failing chunk is searched for its first bad value.
const CHUNK: usize = 1 << 12;

/// Index of the first value for which `bad` holds, if any.
pub fn first_where<T: Copy>(values: &[T], bad: impl Fn(T) -> bool) -> Option<usize> {
    values.chunks(CHUNK).enumerate().find_map(|(c, chunk)| {
        if chunk.iter().fold(false, |any, &v| any | bad(v)) {
            chunk.iter().position(|&v| bad(v)).map(|i| c * CHUNK + i)
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_bad_value_is_found_in_any_chunk() {
        for (first, second) in [(0usize, 5usize), (4095, 4096), (4096, 9999), (8200, 8201)] {
            let mut v = vec![1u8; 10_000];
            v[first] = 0;
            v[second] = 0;
            assert_eq!(first_where(&v, |x| x == 0), Some(first));
        }
        assert_eq!(first_where(&[1u8; 10_000], |x| x == 0), None);
        assert_eq!(first_where::<u8>(&[], |x| x == 0), None);
    }
}
