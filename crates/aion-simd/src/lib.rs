//! The NER encoder's low-precision CPU kernels, written with SIMD intrinsics (the workspace's one
//! crate with unsafe code):
//! - [`int8`]: the dense layers' matrix products in int8, with onnxruntime's `accuracy_level = 4`
//!   numerics, on AVX-512 VNNI, AVX-VNNI, AVX2 or scalar code chosen at run time;
//! - [`bf16`]: attention with its second product in bf16 and f32 sums, on AVX-512 BF16.

pub mod bf16;
pub mod int8;

/// Cephes' `expf`: e^x = 2ⁿ · e^r with x = n · ln 2 + r (ln 2 in two parts, so that n · ln 2 is
/// exact enough) and e^r = 1 + r + r² · p(r). Shared by [`bf16`]'s softmax and the encoder's
/// portable kernels, so that both compute the same exponential.
pub mod expf {
    /// ln 2 = `LN2_HIGH + LN2_LOW`, the first exact in few bits.
    pub const LN2_HIGH: f32 = 0.693_359_4;
    /// The rest of ln 2.
    pub const LN2_LOW: f32 = -2.121_944_4e-4;
    /// p's coefficients, the highest power's first.
    pub const P: [f32; 6] = [
        1.987_569_1e-4,
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        5e-1,
    ];
}
