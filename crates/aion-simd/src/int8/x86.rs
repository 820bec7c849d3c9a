//! The x86-64 kernels. Each is a safe function that checked the CPU feature it needs is present
//! (its caller, [`super::matmul_with`], asserted it) and calls an `unsafe` body compiled for that
//! feature. Tiles: a few rows × whole panels, accumulated in registers block by block.

use std::{arch::x86_64::*, mem::MaybeUninit};

use super::{Activations, Weights, BLOCK, GROUP, PANEL, SHIFT};

pub fn has_avx512_vnni() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vnni")
}

/// AVX-512 F and BW: the 512-bit quantiser.
pub fn has_avx512() -> bool {
    is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw")
}

pub fn has_avx_vnni() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("avxvnni")
}

pub fn has_avx2() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

pub fn quantize_activations_avx2(x: &[f32], a: &mut Activations) {
    assert!(has_avx2());
    // SAFETY: the CPU has AVX2 and FMA (asserted above).
    unsafe { quantize_avx2(x, a) }
}

/// [`super::quantize_activations`] eight lanes at a time: the same maximum, scale, round-half-to-
/// even codes and block starts.
#[target_feature(enable = "avx2,fma")]
fn quantize_avx2(x: &[f32], a: &mut Activations) {
    let magnitude = _mm256_castsi256_ps(_mm256_set1_epi32(i32::MAX));
    for row in super::rows(x, a) {
        for (values, codes, scale, start) in row {
            // A full block is read in place; only a row's last, partial block is copied (a copy
            // of a run-time length is a `memmove` call per block).
            let mut padded = [0f32; BLOCK];
            let block: &[f32] = if values.len() == BLOCK {
                values
            } else {
                padded[..values.len()].copy_from_slice(values);
                &padded
            };
            let mut v = [_mm256_setzero_ps(); BLOCK / 8];
            let mut max = _mm256_setzero_ps();
            for (i, v) in v.iter_mut().enumerate() {
                // SAFETY: `block` holds 32 f32: 8 from i · 8 are in bounds.
                *v = unsafe { _mm256_loadu_ps(block[i * 8..].as_ptr()) };
                max = _mm256_max_ps(max, _mm256_and_ps(*v, magnitude));
            }
            let mut lanes = [0f32; 8];
            // SAFETY: `lanes` holds 8 f32.
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), max) };
            let max = lanes.into_iter().fold(0f32, f32::max);
            *scale = max / 127.0;
            let inverse = _mm256_set1_ps(if max > 0.0 { 127.0 / max } else { 0.0 });
            let mut q = [0i32; BLOCK];
            for (i, v) in v.iter().enumerate() {
                // Rounds half to even, as `round_ties_even`.
                let r = _mm256_cvtps_epi32(_mm256_mul_ps(*v, inverse));
                // SAFETY: `q` holds 32 i32: 8 from i · 8 are in bounds.
                unsafe { _mm256_storeu_si256(q[i * 8..].as_mut_ptr().cast(), r) };
            }
            for (c, q) in codes.iter_mut().zip(q) {
                *c = q as i8;
            }
            *start = -SHIFT * q.iter().sum::<i32>();
        }
    }
}

pub fn quantize_activations_avx512(x: &[f32], a: &mut Activations) {
    assert!(has_avx512());
    // SAFETY: the CPU has AVX-512 F and BW (asserted above).
    unsafe { quantize_avx512(x, a) }
}

/// [`super::quantize_activations`] a block (two vectors) at a time: the same maximum, scale,
/// round-half-to-even codes and block starts.
#[target_feature(enable = "avx512f,avx512bw")]
fn quantize_avx512(x: &[f32], a: &mut Activations) {
    for row in super::rows(x, a) {
        for (values, codes, scale, start) in row {
            // A row's last block may be partial: the rest of it reads as zeros.
            let [low, high] = [0, 16].map(|first| {
                let live = 16.min(values.len().saturating_sub(first));
                let mask = ((1u32 << live) - 1) as __mmask16;
                // SAFETY: the mask reads `live` f32 from `first`, inside `values`.
                unsafe { _mm512_maskz_loadu_ps(mask, values.as_ptr().wrapping_add(first)) }
            });
            let max = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(low), _mm512_abs_ps(high)));
            *scale = max / 127.0;
            let inverse = _mm512_set1_ps(if max > 0.0 { 127.0 / max } else { 0.0 });
            // Rounds half to even, as `round_ties_even`.
            let [low, high] = [low, high].map(|v| _mm512_cvtps_epi32(_mm512_mul_ps(v, inverse)));
            for (half, q) in codes.chunks_exact_mut(16).zip([low, high]) {
                let bytes = _mm512_cvtsepi32_epi8(q);
                // SAFETY: `half` holds 16 bytes, what the narrowed vector stores.
                unsafe { _mm_storeu_si128(half.as_mut_ptr().cast(), bytes) };
            }
            *start = -SHIFT * _mm512_reduce_add_epi32(_mm512_add_epi32(low, high));
        }
    }
}

pub fn avx512_vnni(x: &Activations, w: &Weights, out: &mut [MaybeUninit<f32>]) {
    assert!(has_avx512_vnni());
    let mut panel = 0;
    while panel + PANELS_512 <= w.panels {
        // SAFETY: the CPU has AVX-512 F, BW and VNNI (asserted above).
        unsafe { avx512_panels::<PANELS_512>(x, w, out, panel) };
        panel += PANELS_512;
    }
    while panel < w.panels {
        // SAFETY: as above.
        unsafe { avx512_panels::<1>(x, w, out, panel) };
        panel += 1;
    }
}

/// The AVX-512 tile: 4 rows × 4 panels of 16 columns, the bias added as it is stored. Its 16
/// integer sums, 4 weight vectors and a broadcast stay in the 32 registers through a block; per
/// 16 `vpdpbusd`, 4 loads and 4 broadcasts.
const ROWS_512: usize = 4;
const PANELS_512: usize = 4;

/// Panels `first..first + P` for every row. (Loops, not closures: a closure is not compiled with
/// its function's target features, so its intrinsics would not inline.)
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn avx512_panels<const P: usize>(
    x: &Activations,
    w: &Weights,
    out: &mut [MaybeUninit<f32>],
    first: usize,
) {
    const R: usize = ROWS_512;
    for row0 in (0..x.rows).step_by(R) {
        let n = R.min(x.rows - row0);
        // Rows past the end repeat the last one; their results are not stored.
        let mut rows = [x.row(row0); R];
        for (r, row) in rows.iter_mut().enumerate() {
            *row = x.row(row0 + r.min(n - 1));
        }
        let mut acc = [[_mm512_setzero_ps(); P]; R];
        for b in 0..w.blocks {
            let mut blocks = [w.panel_block(first, b); P];
            for (p, block) in blocks.iter_mut().enumerate() {
                *block = w.panel_block(first + p, b);
            }
            let mut sums = [[_mm512_setzero_si512(); P]; R];
            for r in 0..R {
                let start = _mm512_set1_epi32(rows[r].2[b]);
                for sum in sums[r].iter_mut() {
                    *sum = start;
                }
            }
            for g in 0..BLOCK / GROUP {
                let mut codes = [_mm512_setzero_si512(); P];
                for (p, codes) in codes.iter_mut().enumerate() {
                    let group = &blocks[p].0[g * PANEL * GROUP..][..PANEL * GROUP];
                    // SAFETY: `group` holds 64 bytes, one unaligned 512-bit load.
                    *codes = unsafe { _mm512_loadu_si512(group.as_ptr().cast()) };
                }
                for r in 0..R {
                    let x4 = &rows[r].0[b * BLOCK + g * GROUP..][..GROUP];
                    // SAFETY: `x4` holds 4 bytes, read as one unaligned i32.
                    let x4 = unsafe { x4.as_ptr().cast::<i32>().read_unaligned() };
                    let x4 = _mm512_set1_epi32(x4);
                    for p in 0..P {
                        sums[r][p] = _mm512_dpbusd_epi32(sums[r][p], codes[p], x4);
                    }
                }
            }
            for p in 0..P {
                // SAFETY: a panel's scales are 16 f32, one unaligned 512-bit load.
                let scales = unsafe { _mm512_loadu_ps(blocks[p].1.as_ptr()) };
                for r in 0..R {
                    let scale = _mm512_mul_ps(scales, _mm512_set1_ps(rows[r].1[b]));
                    let sum = _mm512_cvtepi32_ps(sums[r][p]);
                    acc[r][p] = _mm512_fmadd_ps(sum, scale, acc[r][p]);
                }
            }
        }
        for (r, acc) in acc.iter().take(n).enumerate() {
            let row = &mut out[(row0 + r) * w.outputs..][..w.outputs];
            for (p, &v) in acc.iter().enumerate() {
                // SAFETY: a panel's bias is 16 f32, one unaligned 512-bit load.
                let bias = unsafe { _mm512_loadu_ps(w.panel_bias(first + p).as_ptr()) };
                let v = _mm512_add_ps(v, bias);
                let col = (first + p) * PANEL;
                // A panel starts inside the row; the last one may be partial.
                let cols = PANEL.min(w.outputs - col);
                let mask = ((1u32 << cols) - 1) as __mmask16;
                // SAFETY: the mask stores `cols` f32 from `col`, inside `row`.
                unsafe { _mm512_mask_storeu_ps(row[col..].as_mut_ptr().cast(), mask, v) };
            }
        }
    }
}

/// Stores the lanes of `v` below `cols` at `to` (the 256-bit kernels' masked store).
///
/// # Safety
/// `to` must hold `cols` ≤ 8 f32.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn store_256(to: &mut [MaybeUninit<f32>], cols: usize, v: __m256) {
    debug_assert!(cols <= 8 && to.len() >= cols);
    let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(cols as i32), lanes);
    // SAFETY: lanes at and past `cols` are masked off; the caller guarantees the rest.
    unsafe { _mm256_maskstore_ps(to.as_mut_ptr().cast(), mask, v) };
}

pub fn avx_vnni(x: &Activations, w: &Weights, out: &mut [MaybeUninit<f32>]) {
    assert!(has_avx_vnni());
    // SAFETY: the CPU has AVX2, FMA and AVX-VNNI (asserted above).
    unsafe { avx_vnni_body(x, w, out) }
}

pub fn avx2(x: &Activations, w: &Weights, out: &mut [MaybeUninit<f32>]) {
    assert!(has_avx2());
    // SAFETY: the CPU has AVX2 and FMA (asserted above).
    unsafe { avx2_body(x, w, out) }
}

/// `acc` + the sums of 4 unsigned × signed byte products per 32-bit lane, with AVX-VNNI.
#[inline]
#[target_feature(enable = "avx2,avxvnni")]
fn dot_avx_vnni(acc: __m256i, w: __m256i, x: __m256i) -> __m256i {
    _mm256_dpbusd_avx_epi32(acc, w, x)
}

/// [`dot_avx_vnni`] with AVX2: pairs of u8 · i8 products sum to at most 127 · 127 · 2 < 2¹⁵, so
/// `vpmaddubsw` does not saturate.
#[inline]
#[target_feature(enable = "avx2")]
fn dot_avx2(acc: __m256i, w: __m256i, x: __m256i) -> __m256i {
    let pairs = _mm256_maddubs_epi16(w, x);
    _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
}

/// Rows per 256-bit tile: 3 rows × one panel (two vectors) keep 6 integer sums, 6 accumulators,
/// 2 weight vectors and the broadcast in 16 registers.
const ROWS_256: usize = 3;

/// The 256-bit kernels, each panel as two vectors of 8 columns; they differ in the dot product
/// and the features they are compiled with.
macro_rules! avx256_kernel {
    ($name:ident, $features:literal, $dot:ident) => {
        #[target_feature(enable = $features)]
        fn $name(x: &Activations, w: &Weights, out: &mut [MaybeUninit<f32>]) {
            const R: usize = ROWS_256;
            for panel in 0..w.panels {
                for row0 in (0..x.rows).step_by(R) {
                    let n = R.min(x.rows - row0);
                    let mut rows = [x.row(row0); R];
                    for (r, row) in rows.iter_mut().enumerate() {
                        *row = x.row(row0 + r.min(n - 1));
                    }
                    let mut acc = [[_mm256_setzero_ps(); 2]; R];
                    for b in 0..w.blocks {
                        let (codes, scales) = w.panel_block(panel, b);
                        let mut sums = [[_mm256_setzero_si256(); 2]; R];
                        for r in 0..R {
                            let start = _mm256_set1_epi32(rows[r].2[b]);
                            sums[r] = [start, start];
                        }
                        for g in 0..BLOCK / GROUP {
                            let group = &codes[g * PANEL * GROUP..][..PANEL * GROUP];
                            // SAFETY: `group` holds 64 bytes: two unaligned 256-bit loads.
                            let low = unsafe { _mm256_loadu_si256(group.as_ptr().cast()) };
                            // SAFETY: as above, the second half.
                            let high = unsafe { _mm256_loadu_si256(group[32..].as_ptr().cast()) };
                            for r in 0..R {
                                let x4 = &rows[r].0[b * BLOCK + g * GROUP..][..GROUP];
                                // SAFETY: `x4` holds 4 bytes, read as one unaligned i32.
                                let x4 = unsafe { x4.as_ptr().cast::<i32>().read_unaligned() };
                                let x4 = _mm256_set1_epi32(x4);
                                sums[r][0] = $dot(sums[r][0], low, x4);
                                sums[r][1] = $dot(sums[r][1], high, x4);
                            }
                        }
                        for h in 0..2 {
                            // SAFETY: `scales` holds 16 f32: 8 from h · 8 are in bounds.
                            let s = unsafe { _mm256_loadu_ps(scales[h * 8..].as_ptr()) };
                            for r in 0..R {
                                let scale = _mm256_mul_ps(s, _mm256_set1_ps(rows[r].1[b]));
                                let sum = _mm256_cvtepi32_ps(sums[r][h]);
                                acc[r][h] = _mm256_fmadd_ps(sum, scale, acc[r][h]);
                            }
                        }
                    }
                    let bias = w.panel_bias(panel);
                    for (r, acc) in acc.iter().take(n).enumerate() {
                        let row = &mut out[(row0 + r) * w.outputs..][..w.outputs];
                        for (h, &v) in acc.iter().enumerate() {
                            // SAFETY: `bias` holds 16 f32: 8 from h · 8 are in bounds.
                            let v = _mm256_add_ps(v, unsafe {
                                _mm256_loadu_ps(bias[h * 8..].as_ptr())
                            });
                            let col = panel * PANEL + h * 8;
                            if col < w.outputs {
                                let cols = 8.min(w.outputs - col);
                                // SAFETY: `row` holds `cols` f32 from `col`.
                                unsafe { store_256(&mut row[col..], cols, v) };
                            }
                        }
                    }
                }
            }
        }
    };
}

avx256_kernel!(avx_vnni_body, "avx2,fma,avxvnni", dot_avx_vnni);
avx256_kernel!(avx2_body, "avx2,fma", dot_avx2);
