//! Attention with its second product in bf16: scores in f32, the softmax in f32 with its
//! exponentials going straight into bf16 probabilities, and probabilities × values with AVX-512
//! BF16's `vdpbf16ps` (two bf16 products added into each f32 lane, twice the multiply-adds of an
//! f32 FMA per instruction), summed in f32 and scaled by the f32 exponentials' sum. bf16 keeps 8
//! bits of mantissa and f32's exponent range: no scale to choose, unlike int8.
//!
//! The scores stay f32 because rounding queries and keys to bf16 moves every score by up to 2⁻⁸
//! of its terms, and the softmax turns that into a relative error of each probability: with bf16
//! scores the int8 model's entity F1 against the shipped model fell from 0.991–0.992 to
//! 0.989–0.990 on the tests' 640 texts. A probability or value rounded to bf16 moves its term of
//! the output by at most 2⁻⁸ of itself.
//!
//! Layouts:
//! - keys `[dim][keys rounded up to 32]` f32: a vector holds 16 keys' same feature, so a query's
//!   feature broadcast against it gives 16 scores' partial sums;
//! - values `[keys / 2][dim rounded up to 32]`, each `u32` two bf16 (the lower half first, as
//!   `vdpbf16ps` pairs them): a vector of 16 features of a pair of keys, so a pair of
//!   probabilities broadcast against it gives 16 context features' partial sums.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

#[cfg(target_arch = "x86_64")]
use crate::expf;

/// Keys per score tile: 2 vectors of 16, 8 sums for 4 queries. Tiles of 64 keys computed a
/// quarter more scores than a window of 188 keys (the realistic windows' mean) has, for nothing;
/// tiles of 32 ran about 1 % faster, and tiles of 16 (4 sums) slower.
const KEYS: usize = 32;
/// Queries per call: each key or value vector loaded once serves all of them.
pub const QUERIES: usize = 4;

/// A vector of 32 bf16 from the same 64 bytes as integers.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn as_bf16(v: __m512i) -> __m512bh {
    // SAFETY: both are 64 bytes of plain lanes; every bit pattern is a valid value of either.
    unsafe { std::mem::transmute::<__m512i, __m512bh>(v) }
}

/// The same 64 bytes as integers.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn as_integers(v: __m512bh) -> __m512i {
    // SAFETY: as in `as_bf16`.
    unsafe { std::mem::transmute::<__m512bh, __m512i>(v) }
}

/// Whether this CPU has AVX-512 BF16 (and the AVX-512 F and BW it builds on).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// One attention head of one sequence: its keys (f32) and values (bf16), packed once for every
/// query. Its buffers are reused from head to head.
#[derive(Debug, Default)]
pub struct Head {
    keys: Vec<f32>,
    values: Vec<u32>,
    /// Up to [`QUERIES`] queries' scores, `[QUERIES][padded_n]`.
    scores: Vec<f32>,
    /// Each query's unnormalised probabilities as bf16 pairs, `[QUERIES][keys / 2 rounded up to
    /// 16]`.
    probs: Vec<u32>,
    n: usize,
    dim: usize,
}

impl Head {
    /// Packs `n` keys and values of width `dim` (`key(j)`, `value(j)`).
    ///
    /// # Panics
    /// If a key or value is not `dim` wide, or the CPU lacks AVX-512 BF16.
    pub fn pack<'a>(
        &mut self,
        n: usize,
        dim: usize,
        key: impl Fn(usize) -> &'a [f32],
        value: impl Fn(usize) -> &'a [f32],
    ) {
        self.n = n;
        self.dim = dim;
        let (padded_n, padded_dim) = (self.padded_n(), self.padded_dim());
        // Not cleared: every key and value below `n` is written, what lies past them is masked
        // off or never stored.
        self.keys.resize(dim * padded_n, 0.0);
        self.values.resize(n.div_ceil(2) * padded_dim, 0);
        assert!(available(), "this CPU lacks AVX-512 BF16");
        let width = |x: &'a [f32]| {
            assert_eq!(x.len(), dim, "keys and values are {dim} wide");
            x
        };
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX-512 F, BW and BF16 (asserted above).
        unsafe {
            pack_values_avx512(self, |j| width(value(j)))
        };
        for first in (0..n).step_by(16) {
            let live = 16.min(n - first);
            let keys: [&[f32]; 16] = std::array::from_fn(|r| match r < live {
                true => width(key(first + r)),
                false => &[],
            });
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            unsafe {
                pack_keys_avx512(self, first, &keys)
            };
        }
    }

    /// Keys rounded up to a score tile.
    fn padded_n(&self) -> usize {
        self.n.next_multiple_of(KEYS)
    }

    /// Features rounded up to two vectors, what [`context_avx512`] takes at a time.
    fn padded_dim(&self) -> usize {
        self.dim.next_multiple_of(32)
    }

    /// Pairs of keys rounded up to a vector: a row of [`Head::probs`].
    fn row_pairs(&self) -> usize {
        self.n.div_ceil(2).next_multiple_of(16)
    }

    /// The attention of up to [`QUERIES`] queries (`dim` wide, already scaled) over the packed
    /// keys and values: `out[q · out_stride..][..dim]` = `Σ_j softmax(scores)[j] · value(j)`.
    ///
    /// # Panics
    /// If a query is not `dim` wide, `out` is too short, or the CPU lacks AVX-512 BF16.
    pub fn attend(&mut self, queries: &[&[f32]], out: &mut [f32], out_stride: usize) {
        let n = queries.len();
        assert!(n <= QUERIES && queries.iter().all(|q| q.len() == self.dim));
        assert!(n == 0 || out.len() >= (n - 1) * out_stride + self.dim);
        assert!(available(), "this CPU lacks AVX-512 BF16");
        if n == 0 {
            return;
        }
        self.scores.resize(QUERIES * self.padded_n(), 0.0);
        self.probs.resize(QUERIES * self.row_pairs(), 0);
        #[cfg(target_arch = "x86_64")]
        {
            // SAFETY: the CPU has AVX-512 F, BW and BF16 (asserted above).
            unsafe { scores_avx512(self, queries) };
            // SAFETY: as above.
            let scale = unsafe { softmax_avx512(self, n) };
            // SAFETY: as above.
            unsafe { context_avx512(self, &scale[..n], out, out_stride) };
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
fn scores_avx512(head: &mut Head, queries: &[&[f32]]) {
    let live = queries.len();
    // Rows past the given queries repeat the last one: every loop runs all 4, in registers.
    let q: [&[f32]; QUERIES] = std::array::from_fn(|i| queries[i.min(live - 1)]);
    let (padded_n, dim) = (head.padded_n(), head.dim);
    let Head { keys, scores, .. } = head;
    for first in (0..padded_n).step_by(KEYS) {
        let mut acc = [[_mm512_setzero_ps(); KEYS / 16]; QUERIES];
        for c in 0..dim {
            let keys = &keys[c * padded_n + first..][..KEYS];
            let mut k = [_mm512_setzero_ps(); KEYS / 16];
            for (v, k) in k.iter_mut().enumerate() {
                // SAFETY: `keys` holds KEYS f32: 16 from v · 16 are in bounds.
                *k = unsafe { _mm512_loadu_ps(keys[v * 16..].as_ptr()) };
            }
            for (acc, q) in acc.iter_mut().zip(&q) {
                let qc = _mm512_set1_ps(q[c]);
                for (acc, &k) in acc.iter_mut().zip(&k) {
                    *acc = _mm512_fmadd_ps(qc, k, *acc);
                }
            }
        }
        for (q, acc) in acc.iter().take(live).enumerate() {
            let row = &mut scores[q * padded_n + first..][..KEYS];
            for (v, &acc) in acc.iter().enumerate() {
                // SAFETY: `row` holds KEYS f32: 16 from v · 16 are in bounds.
                unsafe { _mm512_storeu_ps(row[v * 16..].as_mut_ptr(), acc) };
            }
        }
    }
}

/// 16 f32 from `at` in `x`, zeros past its end.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
fn load_16(x: &[f32], at: usize) -> __m512 {
    load_16_or(x, at, 0.0)
}

/// 16 f32 from `at` in `x`, `past` past its end.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
fn load_16_or(x: &[f32], at: usize, past: f32) -> __m512 {
    let live = 16.min(x.len().saturating_sub(at));
    let mask = ((1u32 << live) - 1) as __mmask16;
    let past = _mm512_set1_ps(past);
    // SAFETY: the mask reads `live` f32 from `at`, inside `x` (none when `at` is past its end).
    unsafe { _mm512_mask_loadu_ps(past, mask, x.as_ptr().wrapping_add(at)) }
}

/// Each lane of `v` rounded to bf16 (ties to even), in the lane's upper 16 bits; the lower 16 are
/// zero. The same rounding as `vcvtne2ps2bf16` on finite values (ties to even).
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
fn rounded(v: __m512) -> __m512i {
    let bits = _mm512_castps_si512(v);
    let odd = _mm512_and_si512(_mm512_srli_epi32::<16>(bits), _mm512_set1_epi32(1));
    let up = _mm512_add_epi32(bits, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff)));
    _mm512_and_si512(up, _mm512_set1_epi32(0xffff_0000_u32 as i32))
}

/// Keys `first..first + 16` (empty past the last) into the keys' columns, 16 keys' features
/// transposed in registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
fn pack_keys_avx512(head: &mut Head, first: usize, keys: &[&[f32]; 16]) {
    let (padded_n, dim) = (head.padded_n(), head.dim);
    for feature in (0..dim).step_by(16) {
        let rows = keys.map(|k| _mm512_castps_si512(load_16(k, feature)));
        let columns = transpose(rows);
        for (c, column) in columns.iter().enumerate().take(dim - feature) {
            let to = &mut head.keys[(feature + c) * padded_n + first..][..16];
            // SAFETY: `to` holds 16 f32 (a row of keys is padded to a multiple of 32, `first`
            // is a multiple of 16 below it).
            unsafe { _mm512_storeu_si512(to.as_mut_ptr().cast(), *column) };
        }
    }
}

/// A 16 × 16 matrix of 32-bit lanes transposed: `out[c]` lane `r` is `rows[r]` lane `c`. Pairs
/// of rows interleaved by 32 then 64 bits leave 4 × 4 blocks transposed inside each 128-bit
/// lane; two rounds of 128-bit shuffles put the blocks in place.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
fn transpose(rows: [__m512i; 16]) -> [__m512i; 16] {
    let zero = _mm512_setzero_si512();
    let mut t = [zero; 16];
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_epi32(rows[2 * i], rows[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(rows[2 * i], rows[2 * i + 1]);
    }
    // u[4g + k], 128-bit lane l: column 4l + k of rows 4g..4g + 4.
    let mut u = [zero; 16];
    for g in 0..4 {
        u[4 * g] = _mm512_unpacklo_epi64(t[4 * g], t[4 * g + 2]);
        u[4 * g + 1] = _mm512_unpackhi_epi64(t[4 * g], t[4 * g + 2]);
        u[4 * g + 2] = _mm512_unpacklo_epi64(t[4 * g + 1], t[4 * g + 3]);
        u[4 * g + 3] = _mm512_unpackhi_epi64(t[4 * g + 1], t[4 * g + 3]);
    }
    // Column 4l + k is lane l of u[k], u[4 + k], u[8 + k], u[12 + k].
    let mut out = [zero; 16];
    for k in 0..4 {
        let (a0, a1, a2, a3) = (u[k], u[4 + k], u[8 + k], u[12 + k]);
        let even_01 = _mm512_shuffle_i32x4::<0x88>(a0, a1);
        let odd_01 = _mm512_shuffle_i32x4::<0xdd>(a0, a1);
        let even_23 = _mm512_shuffle_i32x4::<0x88>(a2, a3);
        let odd_23 = _mm512_shuffle_i32x4::<0xdd>(a2, a3);
        out[k] = _mm512_shuffle_i32x4::<0x88>(even_01, even_23);
        out[4 + k] = _mm512_shuffle_i32x4::<0x88>(odd_01, odd_23);
        out[8 + k] = _mm512_shuffle_i32x4::<0xdd>(even_01, even_23);
        out[12 + k] = _mm512_shuffle_i32x4::<0xdd>(odd_01, odd_23);
    }
    out
}

/// Every value into the values' pairs: an even key's features in the low halves, the next
/// key's (zero past the last) in the high ones.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
fn pack_values_avx512<'a>(head: &mut Head, value: impl Fn(usize) -> &'a [f32]) {
    let (n, dim, padded_dim) = (head.n, head.dim, head.padded_dim());
    for (pair, row) in head.values.chunks_exact_mut(padded_dim).enumerate() {
        let even = value(2 * pair);
        let odd = match 2 * pair + 1 < n {
            true => value(2 * pair + 1),
            false => &[],
        };
        for first in (0..dim).step_by(16) {
            let low = _mm512_srli_epi32::<16>(rounded(load_16(even, first)));
            let both = _mm512_or_si512(low, rounded(load_16(odd, first)));
            let to = row[first..][..16].as_mut_ptr();
            // SAFETY: `row` holds whole vectors: 16 u32 from `first` are in bounds.
            unsafe { _mm512_storeu_si512(to.cast(), both) };
        }
    }
}

/// The given queries' scores into unnormalised probabilities `e^(score − max)` as bf16 pairs,
/// zero past the keys; returns each one's `1 / Σ e` of the f32 values. (The context runs all
/// [`QUERIES`] rows, which keeps its sums in registers: the rows of queries not given hold
/// whatever they held, and their results are not stored.)
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
fn softmax_avx512(head: &mut Head, queries: usize) -> [f32; QUERIES] {
    let (n, padded_n, row_pairs) = (head.n, head.padded_n(), head.row_pairs());
    let mut scale = [0f32; QUERIES];
    for (q, scale) in scale.iter_mut().enumerate().take(queries) {
        let probs = &mut head.probs[q * row_pairs..][..row_pairs];
        // Loops, not closures: a closure is not compiled with its function's target features.
        let scores = &head.scores[q * padded_n..][..n];
        let mut max = _mm512_set1_ps(f32::NEG_INFINITY);
        for first in (0..n).step_by(16) {
            max = _mm512_max_ps(max, load_16_or(scores, first, f32::NEG_INFINITY));
        }
        let max = _mm512_set1_ps(_mm512_reduce_max_ps(max));
        let mut sum = _mm512_setzero_ps();
        for (i, to) in probs.chunks_exact_mut(16).enumerate() {
            let mut halves = [_mm512_setzero_ps(); 2];
            for (h, half) in halves.iter_mut().enumerate() {
                // Past the keys the score reads as −∞: e^−∞ is 0.
                let x = load_16_or(scores, 32 * i + 16 * h, f32::NEG_INFINITY);
                *half = exp_non_positive(_mm512_sub_ps(x, max));
                sum = _mm512_add_ps(sum, *half);
            }
            let pairs = as_integers(_mm512_cvtne2ps_pbh(halves[1], halves[0]));
            // SAFETY: `to` holds 16 u32, 64 bytes.
            unsafe { _mm512_storeu_si512(to.as_mut_ptr().cast(), pairs) };
        }
        *scale = 1.0 / _mm512_reduce_add_ps(sum);
    }
    scale
}

/// e^x for x ≤ 0, as Cephes' `expf` computes it (x = n · ln 2 + r with ln 2 in two parts, e^r a
/// degree-7 polynomial), 2ⁿ applied by `vscalefps`: within 1e-7 of e^x down to −87. Below −104
/// (−∞ included) the result is 0 or the least subnormal.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
fn exp_non_positive(x: __m512) -> __m512 {
    // −∞ would make f NaN; e^−104 is below f32's least subnormal.
    let x = _mm512_max_ps(x, _mm512_set1_ps(-104.0));
    let n = _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E));
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(n);
    // r = x − n · ln 2, ln 2 in two parts.
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(expf::LN2_HIGH), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(expf::LN2_LOW), r);
    let mut p = _mm512_set1_ps(expf::P[0]);
    for &c in &expf::P[1..] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
    }
    let p = _mm512_add_ps(
        _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r),
        _mm512_set1_ps(1.0),
    );
    _mm512_scalef_ps(p, n)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
fn context_avx512(head: &Head, scale: &[f32], out: &mut [f32], stride: usize) {
    let queries = scale.len();
    let (pairs, padded_dim, row_pairs) = (head.n.div_ceil(2), head.padded_dim(), head.row_pairs());
    // Two vectors of features at a time: 8 sums for 4 queries, in registers.
    for first in (0..padded_dim).step_by(32) {
        let mut acc = [[_mm512_setzero_ps(); 2]; QUERIES];
        for jp in 0..pairs {
            let values = &head.values[jp * padded_dim + first..][..32];
            let mut v = [_mm512_setzero_si512(); 2];
            for (i, v) in v.iter_mut().enumerate() {
                // SAFETY: `values` holds 32 u32: 16 from i · 16 are in bounds.
                *v = unsafe { _mm512_loadu_si512(values[i * 16..].as_ptr().cast()) };
            }
            for (q, acc) in acc.iter_mut().enumerate() {
                let p = as_bf16(_mm512_set1_epi32(head.probs[q * row_pairs + jp] as i32));
                for (acc, &v) in acc.iter_mut().zip(&v) {
                    *acc = _mm512_dpbf16_ps(*acc, as_bf16(v), p);
                }
            }
        }
        for (q, acc) in acc.iter().take(queries).enumerate() {
            let s = _mm512_set1_ps(scale[q]);
            for (i, &acc) in acc.iter().enumerate() {
                let col = first + 16 * i;
                if col >= head.dim {
                    break;
                }
                let cols = 16.min(head.dim - col);
                let mask = ((1u32 << cols) - 1) as __mmask16;
                let to = &mut out[q * stride..][..head.dim];
                let scaled = _mm512_mul_ps(acc, s);
                // SAFETY: the mask stores `cols` f32 from `col`, inside `to`.
                unsafe { _mm512_mask_storeu_ps(to[col..].as_mut_ptr(), mask, scaled) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::{rngs::StdRng, Rng, SeedableRng};

    use super::*;

    /// Against f64 attention on the bf16-rounded values: the kernel's other errors are its f32
    /// sums and exponentials (about 1e-7) and the probabilities' rounding to bf16 (at most 2⁻⁸ of
    /// each), so each output is within 2⁻⁸ of `Σ p · |value|` plus 1e-4. Odd key counts and head
    /// widths, partial tiles and fewer than 4 queries included; scores far apart too.
    #[test]
    fn attention_equals_f64_within_the_probabilities_rounding() {
        if !available() {
            eprintln!("no AVX-512 BF16 on this CPU: nothing to test");
            return;
        }
        // Ties to even, as `vcvtne2ps2bf16` rounds finite values.
        let rounded = |x: f32| {
            let bits = x.to_bits();
            f64::from(f32::from_bits(
                (bits + 0x7fff + ((bits >> 16) & 1)) & 0xffff_0000,
            ))
        };
        let mut rng = StdRng::seed_from_u64(11);
        let mut head = Head::default();
        for (n, dim, queries, spread) in [
            (1, 32, 1, 2.0),
            (7, 32, 4, 2.0),
            (65, 64, 3, 2.0),
            (130, 30, 4, 2.0),
            (5, 17, 2, 2.0),
            (200, 32, 4, 12.0),
            (33, 32, 4, 0.01),
            (9, 32, 0, 2.0),
        ] {
            let mut random = |len, scale: f32| -> Vec<f32> {
                (0..len)
                    .map(|_| scale * rng.random_range(-1.0f32..1.0))
                    .collect()
            };
            let (keys, values, q) = (
                random(n * dim, spread),
                random(n * dim, 2.0),
                random(queries * dim, spread),
            );
            head.pack(
                n,
                dim,
                |j| &keys[j * dim..][..dim],
                |j| &values[j * dim..][..dim],
            );
            let rows: Vec<&[f32]> = q.chunks(dim).collect();
            let out_stride = dim + 3;
            let mut out = vec![f32::NAN; queries * out_stride];
            head.attend(&rows, &mut out, out_stride);
            for (qi, query) in rows.iter().enumerate() {
                let scores: Vec<f64> = (0..n)
                    .map(|j| {
                        (0..dim)
                            .map(|c| f64::from(query[c]) * f64::from(keys[j * dim + c]))
                            .sum()
                    })
                    .collect();
                let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let total: f64 = e.iter().sum();
                for c in 0..out_stride {
                    let got = out[qi * out_stride + c];
                    if c >= dim {
                        assert!(got.is_nan(), "wrote past the head's width");
                        continue;
                    }
                    let v = |j: usize| rounded(values[j * dim + c]);
                    let expected: f64 = (0..n).map(|j| e[j] * v(j)).sum::<f64>() / total;
                    let bound: f64 = (0..n).map(|j| e[j] * v(j).abs()).sum::<f64>() / total;
                    let tolerance = bound / 256.0 + 1e-4;
                    assert!(
                        (f64::from(got) - expected).abs() <= tolerance,
                        "{n} keys of {dim}: {got} vs {expected} (± {tolerance})"
                    );
                }
            }
        }
    }

    /// [`exp_non_positive`] of one value.
    #[target_feature(enable = "avx512f")]
    fn exp_lane(x: f32) -> f32 {
        _mm512_reduce_max_ps(exp_non_positive(_mm512_set1_ps(x)))
    }

    /// The softmax's exponential against f64 down to −87 (below, f32 is subnormal), and about 0
    /// far below.
    #[test]
    fn the_exponential_is_within_1e7_of_f64() {
        if !available() {
            eprintln!("no AVX-512 BF16 on this CPU: nothing to test");
            return;
        }
        let mut worst = 0f64;
        for i in 0..=174_000 {
            let x = -(i as f32) * 0.5e-3;
            // SAFETY: the CPU has AVX-512 F (checked above).
            let got = unsafe { exp_lane(x) };
            let want = f64::from(x).exp();
            worst = worst.max((f64::from(got) - want).abs() / want);
        }
        assert!(worst < 1e-7, "relative error {worst}");
        for x in [-104.0, -1e3, f32::NEG_INFINITY] {
            // SAFETY: as above.
            let got = unsafe { exp_lane(x) };
            assert!((0.0..1e-44).contains(&got), "e^{x} = {got}");
        }
    }
}
