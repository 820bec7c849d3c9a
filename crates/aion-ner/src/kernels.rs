//! The encoder's element-wise work on the CPU, vectorised: candle runs GELU's `erf` and softmax's
//! `exp` one scalar libm call at a time, which cost as much as all the matmuls of this model. Here
//! both are branch-free polynomials inside a `pulp` dispatch, so the compiler vectorises the
//! loops for the widest instruction set the CPU has at run time (AVX-512, AVX2 + FMA, or SSE2)
//! without unsafe code or a `target-cpu` baked into the binary. Other devices use candle's ops.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};

/// `x · Φ(x)` with the exact (erf) Gaussian CDF, as BERT's `gelu`.
pub fn gelu_erf(xs: &Tensor) -> candle_core::Result<Tensor> {
    if xs.device().is_cpu() {
        xs.apply_op1_no_bwd(&GeluErf)
    } else {
        xs.gelu_erf()
    }
}

/// Softmax over the last dimension.
pub fn softmax_last_dim(xs: &Tensor) -> candle_core::Result<Tensor> {
    if xs.device().is_cpu() {
        xs.apply_op1_no_bwd(&Softmax)
    } else {
        candle_nn::ops::softmax_last_dim(xs)
    }
}

/// Self-attention of sequences packed one after another: `qkv` is `[tokens, 3 · hidden]` (each
/// token's queries, keys and values; queries already scaled), `lengths` where each sequence ends;
/// the result `[tokens, hidden]`, each sequence attending only to itself. One pass per query row
/// with the scores in registers' reach: the sequences are short, and as matmuls they are too
/// small for a GEMM to amortise its packing.
pub fn attention(qkv: &Tensor, lengths: &[usize], heads: usize) -> candle_core::Result<Tensor> {
    if qkv.device().is_cpu() {
        qkv.apply_op1_no_bwd(&Attention {
            lengths: lengths.to_vec(),
            heads,
        })
    } else {
        attention_by_matmuls(qkv, lengths, heads)
    }
}

/// [`attention`] as candle tensor ops, for any device: two batched matmuls per sequence.
fn attention_by_matmuls(
    qkv: &Tensor,
    lengths: &[usize],
    heads: usize,
) -> candle_core::Result<Tensor> {
    let hidden = qkv.dim(1)? / 3;
    let mut contexts = Vec::with_capacity(lengths.len());
    let mut start = 0;
    for &n in lengths {
        // [n, 3, heads, head_dim] → [3, heads, n, head_dim]
        let qkv = qkv
            .narrow(0, start, n)?
            .reshape((n, 3, heads, hidden / heads))?
            .permute((1, 2, 0, 3))?
            .contiguous()?;
        let (q, k, v) = (qkv.get(0)?, qkv.get(1)?, qkv.get(2)?);
        let weights = candle_nn::ops::softmax_last_dim(&q.matmul(&k.t()?)?)?;
        contexts.push(weights.matmul(&v)?.transpose(0, 1)?.reshape((n, hidden))?);
        start += n;
    }
    Tensor::cat(&contexts, 0)
}

struct Attention {
    lengths: Vec<usize>,
    heads: usize,
}

impl CustomOp1 for Attention {
    fn name(&self) -> &'static str {
        "aion-packed-attention"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let src = contiguous(self.name(), s, l)?;
        let (tokens, width) = l.shape().dims2()?;
        let hidden = width / 3;
        if width % 3 != 0 || hidden % self.heads.max(1) != 0 {
            candle_core::bail!(
                "attention: {width} features are not 3 × {} heads",
                self.heads
            );
        }
        if self.lengths.iter().sum::<usize>() != tokens {
            candle_core::bail!("attention: the lengths do not add up to {tokens} tokens");
        }
        let mut dst = vec![0f32; tokens * hidden];
        pulp::Arch::new().dispatch(PackedAttention {
            qkv: src,
            out: &mut dst,
            lengths: &self.lengths,
            heads: self.heads,
            hidden,
        });
        Ok((CpuStorage::F32(dst), Shape::from((tokens, hidden))))
    }
}

struct PackedAttention<'a> {
    qkv: &'a [f32],
    out: &'a mut [f32],
    lengths: &'a [usize],
    heads: usize,
    hidden: usize,
}

impl pulp::WithSimd for PackedAttention<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        let (hidden, dim) = (self.hidden, self.hidden / self.heads);
        let row = |t: usize| &self.qkv[t * 3 * hidden..(t + 1) * 3 * hidden];
        // One head's keys transposed, `[dim, n]`: a query's scores are then `dim` vector
        // multiply-adds across the keys, with no horizontal sum per key.
        let mut keys = Vec::new();
        let mut scores = Vec::new();
        let mut start = 0;
        for &n in self.lengths {
            let tokens = start..start + n;
            scores.resize(n, 0f32);
            keys.resize(dim * n, 0f32);
            for head in 0..self.heads {
                let at = head * dim;
                for (j, t) in tokens.clone().enumerate() {
                    for (c, &k) in row(t)[hidden + at..hidden + at + dim].iter().enumerate() {
                        keys[c * n + j] = k;
                    }
                }
                for i in tokens.clone() {
                    scores.fill(0.0);
                    for (&q, keys) in row(i)[at..at + dim].iter().zip(keys.chunks_exact(n)) {
                        for (s, &k) in scores.iter_mut().zip(keys) {
                            *s = k.mul_add(q, *s);
                        }
                    }
                    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    for score in scores.iter_mut() {
                        *score = exp(*score - max);
                    }
                    let scale = 1.0 / sum(&scores);
                    let out = &mut self.out[i * hidden + at..i * hidden + at + dim];
                    for (t, &p) in tokens.clone().zip(&scores) {
                        let v = &row(t)[2 * hidden + at..2 * hidden + at + dim];
                        for (o, &v) in out.iter_mut().zip(v) {
                            *o = v.mul_add(p, *o);
                        }
                    }
                    for o in out.iter_mut() {
                        *o *= scale;
                    }
                }
            }
            start += n;
        }
    }
}

/// The f32 values of a contiguous tensor.
fn contiguous<'a>(
    op: &str,
    storage: &'a CpuStorage,
    layout: &Layout,
) -> candle_core::Result<&'a [f32]> {
    let all = storage.as_slice::<f32>()?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&all[start..end]),
        None => candle_core::bail!("{op}: the input must be contiguous"),
    }
}

struct GeluErf;

impl CustomOp1 for GeluErf {
    fn name(&self) -> &'static str {
        "aion-gelu-erf"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let src = contiguous(self.name(), s, l)?;
        let mut dst = vec![0f32; src.len()];
        pulp::Arch::new().dispatch(Map {
            src,
            dst: &mut dst,
            f: |x: f32| 0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2)),
        });
        Ok((CpuStorage::F32(dst), l.shape().clone()))
    }
}

/// `dst[i] = f(src[i])`, compiled for the instruction set `pulp` picks: `with_simd` and `f` are
/// inlined into its target-feature function (a plain closure there would not be, and its
/// `mul_add` would become a libm call).
struct Map<'a, F> {
    src: &'a [f32],
    dst: &'a mut [f32],
    f: F,
}

impl<F: Fn(f32) -> f32> pulp::WithSimd for Map<'_, F> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        for (d, &x) in self.dst.iter_mut().zip(self.src) {
            *d = (self.f)(x);
        }
    }
}

struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "aion-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let src = contiguous(self.name(), s, l)?;
        let width = l.shape().dims().last().copied().unwrap_or(1).max(1);
        let mut dst = vec![0f32; src.len()];
        pulp::Arch::new().dispatch(Rows {
            src,
            dst: &mut dst,
            width,
        });
        Ok((CpuStorage::F32(dst), l.shape().clone()))
    }
}

/// Softmax of rows of `width`, inlined into `pulp`'s target-feature function like [`Map`].
struct Rows<'a> {
    src: &'a [f32],
    dst: &'a mut [f32],
    width: usize,
}

impl pulp::WithSimd for Rows<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        let rows = self.src.chunks_exact(self.width);
        for (s, d) in rows.zip(self.dst.chunks_exact_mut(self.width)) {
            let max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            for (d, &x) in d.iter_mut().zip(s) {
                *d = exp(x - max);
            }
            let scale = 1.0 / sum(d);
            for d in d.iter_mut() {
                *d *= scale;
            }
        }
    }
}

/// A sum in 16 independent lanes, so that it vectorises (a plain fold is one serial chain).
#[inline(always)]
fn sum(xs: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    let chunks = xs.chunks_exact(16);
    let tail: f32 = chunks.remainder().iter().sum();
    for chunk in chunks {
        for (l, x) in lanes.iter_mut().zip(chunk) {
            *l += x;
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// erf(x) as a rational function on [-4, 4] (outside it erf is ±1 in f32); the coefficients of
/// Eigen's `generic_fast_erf_float`, within a few ulp of libm.
#[inline(always)]
pub(crate) fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_2e-10_f32;
    for c in [
        2.770_681_4e-8,
        -2.101_024e-6,
        -5.692_506_4e-5,
        -7.349_906e-4,
        -2.954_6e-3,
        -1.609_603_3e-2,
    ] {
        p = p.mul_add(x2, c);
    }
    let mut q = -1.456_607_2e-5_f32;
    for c in [
        -2.133_740_6e-4,
        -1.682_827e-3,
        -7.373_329e-3,
        -1.426_473_9e-2,
    ] {
        q = q.mul_add(x2, c);
    }
    x * p / q
}

/// e^x by range reduction to r in [-ln 2 / 2, ln 2 / 2] and a degree-6 polynomial (Cephes'
/// `expf`), the power of two built in the exponent bits; inputs are clamped to [-87, 88].
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    // ln 2 in two parts, so that n · ln 2 is exact enough.
    let r = n.mul_add(-0.693_359_4, x);
    let r = n.mul_add(2.121_944_4e-4, r);
    let mut p = 1.987_569_1e-4_f32;
    for c in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        5e-1,
    ] {
        p = p.mul_add(r, c);
    }
    let p = p * r * r + r + 1.0;
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both approximations against libm over their whole useful range.
    #[test]
    fn erf_and_exp_are_within_a_few_ulp_of_libm() {
        let mut worst_erf = 0f64;
        let mut worst_exp = 0f64;
        for i in -200_000..=200_000 {
            let x = i as f32 * 6e-5; // [-12, 12]
            let want = libm_erf(x as f64);
            worst_erf = worst_erf.max((erf(x) as f64 - want).abs());
            let y = i as f32 * 4.3e-4; // [-86, 86]
            let want = (y as f64).exp();
            worst_exp = worst_exp.max(((exp(y) as f64 - want) / want).abs());
        }
        assert!(worst_erf < 1e-6, "erf: max abs error {worst_erf:e}");
        assert!(worst_exp < 5e-7, "exp: max rel error {worst_exp:e}");
    }

    /// erf by its Taylor series (|x| < 3) or continued fraction: a reference independent of the
    /// code under test, in f64.
    fn libm_erf(x: f64) -> f64 {
        if x.abs() < 3.0 {
            let (mut term, mut total, mut k) = (x, x, 0.0);
            while term.abs() > 1e-17 {
                k += 1.0;
                term *= -x * x / k;
                total += term / (2.0 * k + 1.0);
            }
            total * 2.0 / std::f64::consts::PI.sqrt()
        } else {
            let mut f = 0.0;
            for k in (1..60).rev() {
                f = k as f64 / 2.0 / (x.abs() + f);
            }
            let erfc = (-x * x).exp() / std::f64::consts::PI.sqrt() / (x.abs() + f);
            (1.0 - erfc).copysign(x)
        }
    }

    #[test]
    fn ops_equal_candles_on_random_input() {
        let xs = Tensor::randn(0f32, 3.0, (7, 37), &candle_core::Device::Cpu).unwrap();
        let close = |a: Tensor, b: Tensor| {
            let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
            d.to_scalar::<f32>().unwrap()
        };
        assert!(close(gelu_erf(&xs).unwrap(), xs.gelu_erf().unwrap()) < 1e-5);
        let ours = softmax_last_dim(&xs).unwrap();
        assert!(close(ours, candle_nn::ops::softmax_last_dim(&xs).unwrap()) < 1e-6);
        let qkv = Tensor::randn(0f32, 1.0, (40, 3 * 24), &candle_core::Device::Cpu).unwrap();
        let lengths = [1, 13, 26];
        let ours = attention(&qkv, &lengths, 4).unwrap();
        assert!(close(ours, attention_by_matmuls(&qkv, &lengths, 4).unwrap()) < 1e-5);
    }
}
