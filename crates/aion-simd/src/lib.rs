//! The NER encoder's low-precision CPU kernels, written with SIMD intrinsics (the workspace's one
//! crate with unsafe code):
//! - [`int8`]: the dense layers' matrix products in int8, with onnxruntime's `accuracy_level = 4`
//!   numerics, on AVX-512 VNNI, AVX-VNNI, AVX2 or scalar code chosen at run time;
//! - [`bf16`]: attention with its second product in bf16 and f32 sums, on AVX-512 BF16.

pub mod bf16;
pub mod int8;
