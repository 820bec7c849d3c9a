//! Attention's two products in bf16 with f32 sums, with AVX-512 BF16's `vdpbf16ps` (two bf16
//! products added into each f32 lane, twice the multiply-adds of an f32 FMA per instruction).
//! Inputs are rounded to bf16 (8 bits of mantissa, f32's exponent range: no scale to choose, unlike
//! int8); every sum is f32. The caller computes the softmax between the two products, in f32.
//!
//! Layouts, each a `u32` holding two bf16 (the lower half first, as `vdpbf16ps` pairs them):
//! - keys `[dim / 2][keys rounded up to 64]`: a vector of 16 keys' pair of features, so a query
//!   pair broadcast against it gives 16 scores' partial sums;
//! - values `[keys / 2][dim rounded up to 32]`: a vector of 16 features of a pair of keys, so a
//!   pair of probabilities broadcast against it gives 16 context features' partial sums.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Keys per score tile: 4 vectors of 16.
const KEYS: usize = 64;
/// Queries per call: each key or value vector loaded once serves all of them.
pub const QUERIES: usize = 4;
/// The widest head: query pairs are kept on the stack.
const MAX_DIM: usize = 256;

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

/// The least distance between queries' scores for [`Head::scores`] over `n` keys: `n` rounded up
/// to a score tile.
pub fn score_stride(n: usize) -> usize {
    n.next_multiple_of(KEYS)
}

/// One attention head of one sequence: its keys and values in bf16, packed once for every query.
#[derive(Debug, Default)]
pub struct Head {
    keys: Vec<u32>,
    values: Vec<u32>,
    /// Each query's probabilities as bf16 pairs, `[QUERIES][keys / 2]`.
    probs: Vec<u32>,
    n: usize,
    dim: usize,
}

impl Head {
    /// Packs `n` keys and values of width `dim` (`key(j)`, `value(j)`).
    ///
    /// # Panics
    /// If `dim` is over 256, or a key or value is not `dim` wide.
    pub fn pack<'a>(
        &mut self,
        n: usize,
        dim: usize,
        key: impl Fn(usize) -> &'a [f32],
        value: impl Fn(usize) -> &'a [f32],
    ) {
        assert!(dim <= MAX_DIM, "head width {dim} is over {MAX_DIM}");
        self.n = n;
        self.dim = dim;
        let (padded_n, pairs, padded_dim) = (self.padded_n(), dim.div_ceil(2), self.padded_dim());
        self.keys.clear();
        self.keys.resize(pairs * padded_n, 0);
        self.values.clear();
        self.values.resize(n.div_ceil(2) * padded_dim, 0);
        assert!(available(), "this CPU lacks AVX-512 BF16");
        for first in (0..n).step_by(16) {
            let live = 16.min(n - first);
            let keys: [&[f32]; 16] = std::array::from_fn(|r| match r < live {
                true => key(first + r),
                false => &[],
            });
            for (r, k) in keys.iter().take(live).enumerate() {
                let v = value(first + r);
                assert!(
                    k.len() == dim && v.len() == dim,
                    "keys and values are {dim} wide"
                );
                #[cfg(target_arch = "x86_64")]
                // SAFETY: the CPU has AVX-512 F, BW and BF16 (asserted above).
                unsafe {
                    pack_value_avx512(self, first + r, v)
                };
            }
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            unsafe {
                pack_keys_avx512(self, first, &keys)
            };
        }
    }

    fn padded_n(&self) -> usize {
        score_stride(self.n)
    }

    /// Features rounded up to two vectors, what [`context_avx512`] takes at a time.
    fn padded_dim(&self) -> usize {
        self.dim.next_multiple_of(32)
    }

    /// The scores of up to [`QUERIES`] queries (`dim` wide) against every key:
    /// `scores[q · stride + j]` for `j < n`, `stride` at least [`score_stride`]; the padding past
    /// `n` holds 0.
    ///
    /// # Panics
    /// If a query is not `dim` wide, `scores` is too short, or the CPU lacks AVX-512 BF16.
    pub fn scores(&self, queries: &[&[f32]], scores: &mut [f32], stride: usize) {
        assert!(queries.len() <= QUERIES && queries.iter().all(|q| q.len() == self.dim));
        assert!(stride >= self.padded_n() && scores.len() >= queries.len() * stride);
        assert!(available(), "this CPU lacks AVX-512 BF16");
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX-512 F, BW and BF16 (asserted above).
        unsafe {
            scores_avx512(self, queries, scores, stride)
        };
    }

    /// The contexts of up to [`QUERIES`] queries: `out[q · out_stride..][..dim]` =
    /// `scale[q] · Σ_j probs[q][j] · value(j)`, each `probs[q]` holding the `n` probabilities.
    ///
    /// # Panics
    /// If the shapes do not match, or the CPU lacks AVX-512 BF16.
    pub fn context(&mut self, probs: &[&[f32]], scale: &[f32], out: &mut [f32], out_stride: usize) {
        let (queries, pairs) = (probs.len(), self.n.div_ceil(2));
        assert!(queries <= QUERIES && scale.len() == queries);
        assert!(probs.iter().all(|p| p.len() == self.n));
        assert!(queries == 0 || out.len() >= (queries - 1) * out_stride + self.dim);
        assert!(available(), "this CPU lacks AVX-512 BF16");
        // Room for whole vectors of pairs.
        self.probs.resize(QUERIES * pairs.next_multiple_of(16), 0);
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX-512 F, BW and BF16 (asserted above).
        unsafe {
            context_avx512(self, probs, scale, out, out_stride)
        };
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
fn scores_avx512(head: &Head, queries: &[&[f32]], scores: &mut [f32], stride: usize) {
    // `[pair][query]`: one query's pair is a broadcast from memory.
    const ROW: usize = MAX_DIM / 2;
    let mut by_query = [0u32; QUERIES * ROW];
    for (q, query) in queries.iter().enumerate() {
        for first in (0..head.dim).step_by(32) {
            let packed = _mm512_cvtne2ps_pbh(load_16(query, first + 16), load_16(query, first));
            // SAFETY: `by_query` holds 4 rows of 128 u32 and `first` < 256: 16 from
            // q · 128 + first / 2 are in bounds.
            let to = by_query[q * ROW + first / 2..].as_mut_ptr().cast();
            // SAFETY: as above.
            unsafe { _mm512_storeu_si512(to, as_integers(packed)) };
        }
    }
    let mut pairs = [0u32; ROW * QUERIES];
    for c in 0..ROW {
        for q in 0..QUERIES {
            pairs[c * QUERIES + q] = by_query[q * ROW + c];
        }
    }
    let queries = queries.len();
    let padded_n = head.padded_n();
    let dim_pairs = head.dim.div_ceil(2);
    for first in (0..padded_n).step_by(KEYS) {
        let mut acc = [[_mm512_setzero_ps(); KEYS / 16]; QUERIES];
        for (c, pairs) in pairs.chunks_exact(QUERIES).take(dim_pairs).enumerate() {
            let keys = &head.keys[c * padded_n + first..][..KEYS];
            let mut k = [_mm512_setzero_si512(); KEYS / 16];
            for (v, k) in k.iter_mut().enumerate() {
                // SAFETY: `keys` holds 64 u32: 16 from v · 16 are in bounds.
                *k = unsafe { _mm512_loadu_si512(keys[v * 16..].as_ptr().cast()) };
            }
            for (acc, &pair) in acc.iter_mut().zip(pairs) {
                let q = as_bf16(_mm512_set1_epi32(pair as i32));
                for (acc, &k) in acc.iter_mut().zip(&k) {
                    *acc = _mm512_dpbf16_ps(*acc, as_bf16(k), q);
                }
            }
        }
        for (q, acc) in acc.iter().take(queries).enumerate() {
            let row = &mut scores[q * stride + first..][..KEYS];
            for (v, &acc) in acc.iter().enumerate() {
                // SAFETY: `row` holds 64 f32: 16 from v · 16 are in bounds.
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
    let live = 16.min(x.len().saturating_sub(at));
    let mask = ((1u32 << live) - 1) as __mmask16;
    // SAFETY: the mask reads `live` f32 from `at`, inside `x` (none when `at` is past its end).
    unsafe { _mm512_maskz_loadu_ps(mask, x.as_ptr().wrapping_add(at)) }
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

/// Keys `first..first + 16` (empty past the last) into the keys' columns: each key's features
/// as bf16 pairs, 16 keys' pairs transposed in registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
fn pack_keys_avx512(head: &mut Head, first: usize, keys: &[&[f32]; 16]) {
    let (padded_n, pairs) = (head.padded_n(), head.dim.div_ceil(2));
    for feature in (0..head.dim).step_by(32) {
        // 32 features as 16 pairs, in order: the low half of `vcvtne2ps2bf16` is its second input.
        let rows = keys.map(|k| {
            as_integers(_mm512_cvtne2ps_pbh(
                load_16(k, feature + 16),
                load_16(k, feature),
            ))
        });
        let columns = transpose(rows);
        for (c, column) in columns.iter().enumerate().take(pairs - feature / 2) {
            let to = &mut head.keys[(feature / 2 + c) * padded_n + first..][..16];
            // SAFETY: `to` holds 16 u32 (a row of keys is padded to 64, `first` is a multiple
            // of 16 below it).
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

/// Value `j` into its half of the values' pairs.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
fn pack_value_avx512(head: &mut Head, j: usize, value: &[f32]) {
    let padded_dim = head.padded_dim();
    let row = &mut head.values[j / 2 * padded_dim..][..padded_dim];
    for first in (0..head.dim).step_by(16) {
        let bits = rounded(load_16(value, first));
        // An even key fills the pairs' low halves (the row starts zeroed), an odd one the high.
        let half = match j % 2 {
            0 => _mm512_srli_epi32::<16>(bits),
            _ => bits,
        };
        let to = row[first..][..16].as_mut_ptr();
        // SAFETY: `row` holds whole vectors: 16 u32 from `first` are in bounds.
        let old = unsafe { _mm512_loadu_si512(to.cast()) };
        let both = _mm512_or_si512(old, half);
        // SAFETY: as above.
        unsafe { _mm512_storeu_si512(to.cast(), both) };
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
fn context_avx512(
    head: &mut Head,
    probs: &[&[f32]],
    scale: &[f32],
    out: &mut [f32],
    stride: usize,
) {
    let queries = probs.len();
    let (pairs, padded_dim) = (head.n.div_ceil(2), head.padded_dim());
    let row_pairs = pairs.next_multiple_of(16);
    // Each query's probabilities as bf16 pairs (zero past `n`, and for the queries not given:
    // every loop below then runs all 4, which keeps the sums in registers).
    for q in 0..QUERIES {
        let p = probs.get(q).copied().unwrap_or_default();
        for first in (0..row_pairs).step_by(16) {
            let packed = _mm512_cvtne2ps_pbh(load_16(p, 2 * first + 16), load_16(p, 2 * first));
            let to = &mut head.probs[q * row_pairs + first..][..16];
            // SAFETY: `to` holds 16 u32, 64 bytes.
            unsafe { _mm512_storeu_si512(to.as_mut_ptr().cast(), as_integers(packed)) };
        }
    }
    let head = &*head;
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

    /// Both products against f64 on the bf16-rounded inputs: the kernel's only error is its f32
    /// sums. Odd key counts and head widths, partial tiles and fewer than 4 queries included.
    #[test]
    fn scores_and_contexts_equal_f64_on_the_rounded_inputs() {
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
        for (n, dim, queries) in [
            (1, 32, 1),
            (7, 32, 4),
            (65, 64, 3),
            (130, 30, 4),
            (5, 17, 2),
        ] {
            let random = |rng: &mut StdRng, len| -> Vec<f32> {
                (0..len).map(|_| rng.random_range(-2.0f32..2.0)).collect()
            };
            let (keys, values, q) = (
                random(&mut rng, n * dim),
                random(&mut rng, n * dim),
                random(&mut rng, queries * dim),
            );
            let mut head = Head::default();
            head.pack(
                n,
                dim,
                |j| &keys[j * dim..][..dim],
                |j| &values[j * dim..][..dim],
            );
            let stride = score_stride(n);
            let mut scores = vec![f32::NAN; queries * stride];
            let rows: Vec<&[f32]> = q.chunks(dim).collect();
            head.scores(&rows, &mut scores, stride);
            for (qi, query) in rows.iter().enumerate() {
                for j in 0..stride {
                    let expected: f64 = if j < n {
                        (0..dim)
                            .map(|c| rounded(query[c]) * rounded(keys[j * dim + c]))
                            .sum()
                    } else {
                        0.0
                    };
                    let got = f64::from(scores[qi * stride + j]);
                    assert!((got - expected).abs() < 1e-4, "score {got} vs {expected}");
                }
            }
            let probs: Vec<f32> = (0..queries * n)
                .map(|_| rng.random_range(0.0f32..1.0))
                .collect();
            let probs: Vec<&[f32]> = probs.chunks(n).collect();
            let scale: Vec<f32> = (0..queries).map(|q| 0.5 + q as f32).collect();
            let out_stride = dim + 3;
            let mut out = vec![f32::NAN; queries * out_stride];
            head.context(&probs, &scale, &mut out, out_stride);
            for (qi, p) in probs.iter().enumerate() {
                for c in 0..out_stride {
                    let got = out[qi * out_stride + c];
                    if c >= dim {
                        assert!(got.is_nan(), "wrote past the head's width");
                        continue;
                    }
                    let sum: f64 = (0..n)
                        .map(|j| rounded(p[j]) * rounded(values[j * dim + c]))
                        .sum();
                    let expected = sum * f64::from(scale[qi]);
                    assert!(
                        (f64::from(got) - expected).abs() < 1e-4 * (1.0 + expected.abs()),
                        "context {got} vs {expected}"
                    );
                }
            }
        }
    }
}
