//! Typed errors of the kernel layer. Every variant names what was expected and what was found.

use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq)]
pub enum KernelError {
    /// A buffer's length does not match the shape it is used with.
    #[error("{what}: expected {expected} elements, found {found}")]
    LengthMismatch {
        what: &'static str,
        expected: usize,
        found: usize,
    },
    /// Two operands disagree on a dimension (e.g. weight columns vs activation columns).
    #[error("{what}: dimensions disagree, expected {expected}, found {found}")]
    ShapeMismatch {
        what: &'static str,
        expected: usize,
        found: usize,
    },
    /// A dimension that must be non-zero (or within a range) is not.
    #[error("{what}: invalid size {found} ({reason})")]
    InvalidSize {
        what: &'static str,
        found: usize,
        reason: &'static str,
    },
    /// No exact orthonormal Hadamard transform of this length is built in.
    #[error(
        "no orthonormal Hadamard transform of length {n}: supported lengths are 2^m, 12*2^m, 20*2^m \
         and 28*2^m (with 2^m <= {max_pow2}); ask for a block-diagonal transform with a power-of-two \
         block that divides {n} instead"
    )]
    UnsupportedHadamardSize { n: usize, max_pow2: usize },
    /// Activations were quantized to a different bit width than the kernel multiplies.
    #[error("activation bits: kernel expects INT{expected} codes, found INT{found}")]
    ActivationBitsMismatch { expected: u8, found: u8 },
    /// A code outside the valid range was found while unpacking or validating data.
    #[error("{what}: invalid code {code} at index {index}")]
    InvalidCode {
        what: &'static str,
        code: i32,
        index: usize,
    },
    /// A value that must be finite is NaN or infinite.
    #[error("{what}: non-finite value at index {index}")]
    NonFinite { what: &'static str, index: usize },
    /// `HBIT_KERNEL_PATH` names an unknown path or one this CPU cannot run.
    #[error("HBIT_KERNEL_PATH={value}: {reason}")]
    BadKernelPath { value: String, reason: String },
}
