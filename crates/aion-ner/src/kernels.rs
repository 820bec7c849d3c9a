//! The encoder's CPU kernels: the dense layer on weights packed once (bias and GELU fused),
//! attention over packed sequences, and softmax. candle runs GELU's `erf` and softmax's `exp` one
//! scalar libm call at a time and packs a matmul's weights on every call; here `erf` and `exp` are
//! branch-free polynomials, and every loop runs inside a `pulp` dispatch, so the compiler
//! vectorises it for the widest instruction set the CPU has at run time (AVX-512, AVX2 + FMA, or
//! SSE2) without unsafe code or a `target-cpu` baked into the binary. Other devices use candle's
//! ops.
//!
//! The encoder's layers work on plain row-major buffers that one forward reuses from layer to
//! layer (`out: &mut Vec<f32>`): a fresh output per op cost page faults and zeroing, 6 % of the
//! int8 forward.

use aion_simd::expf;
use aion_simd::int8::{Activations, Weights};
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};

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
/// `out` becomes `[tokens, hidden]`, each sequence attending only to itself. One pass per tile of
/// 4 query rows with their scores in registers' reach: the sequences are short, and as matmuls
/// they are too small for a GEMM to amortise its packing.
///
/// With `bf16` (on CPUs with AVX-512 BF16, see [`aion_simd::bf16`]) the second product rounds the
/// probabilities and values to bf16 and sums in f32, at twice the multiply-adds per instruction;
/// the scores and the softmax stay f32.
pub fn attention(
    qkv: &[f32],
    lengths: &[usize],
    heads: usize,
    bf16: bool,
    out: &mut Vec<f32>,
) -> candle_core::Result<()> {
    let tokens: usize = lengths.iter().sum();
    let width = qkv.len() / tokens.max(1);
    let hidden = width / 3;
    if qkv.len() != tokens * width
        || !width.is_multiple_of(3)
        || !hidden.is_multiple_of(heads.max(1))
    {
        candle_core::bail!(
            "attention: {} values are not {tokens} tokens of 3 × {heads} heads",
            qkv.len()
        );
    }
    // Every element is written below: a buffer of the same size is not cleared.
    out.resize(tokens * hidden, 0.0);
    pulp::Arch::new().dispatch(PackedAttention {
        qkv,
        out,
        lengths,
        heads,
        hidden,
        bf16: bf16 && aion_simd::bf16::available(),
    });
    Ok(())
}

/// [`attention`] as candle tensor ops, for any device: two batched matmuls per sequence.
pub fn attention_by_matmuls(
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

struct PackedAttention<'a> {
    qkv: &'a [f32],
    out: &'a mut [f32],
    lengths: &'a [usize],
    heads: usize,
    hidden: usize,
    /// The second product in bf16 ([`aion_simd::bf16`]); the CPU has the instructions.
    bf16: bool,
}

/// Queries per attention tile: their scores share each key vector loaded, and their context
/// sums share each value vector, in independent registers.
const QUERIES: usize = 4;

impl PackedAttention<'_> {
    /// [`aion_simd::bf16`]'s attention, head by head, [`bf16::QUERIES`] queries at a time.
    ///
    /// [`bf16::QUERIES`]: aion_simd::bf16::QUERIES
    fn attend_bf16(self) {
        use aion_simd::bf16::{Head, QUERIES};
        let (hidden, dim) = (self.hidden, self.hidden / self.heads);
        let qkv = self.qkv;
        let row = |t: usize| &qkv[t * 3 * hidden..][..3 * hidden];
        let mut head = Head::default();
        let mut start = 0;
        for &n in self.lengths {
            let tokens = start..start + n;
            for at in (0..hidden).step_by(dim) {
                head.pack(
                    n,
                    dim,
                    |j| &row(start + j)[hidden + at..][..dim],
                    |j| &row(start + j)[2 * hidden + at..][..dim],
                );
                for first_query in tokens.clone().step_by(QUERIES) {
                    let live = QUERIES.min(tokens.end - first_query);
                    let queries: [&[f32]; QUERIES] =
                        std::array::from_fn(|q| &row(first_query + q.min(live - 1))[at..][..dim]);
                    let out = &mut self.out[first_query * hidden + at..];
                    head.attend(&queries[..live], out, hidden);
                }
            }
            start += n;
        }
    }
}

impl pulp::WithSimd for PackedAttention<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, simd: S) {
        if self.bf16 {
            return self.attend_bf16();
        }
        let lanes = S::F32_LANES;
        // Two vectors: the width of a context tile; four: of a score tile.
        let block = 2 * lanes;
        let key_block = 4 * lanes;
        let (hidden, dim) = (self.hidden, self.hidden / self.heads);
        let padded_dim = dim.next_multiple_of(block);
        let row = |t: usize| &self.qkv[t * 3 * hidden..(t + 1) * 3 * hidden];
        let zero = simd.splat_f32s(0.0);
        // One head's keys transposed, `[dim][n rounded up to a block]`: the scores of a tile of
        // queries are then multiply-adds of whole key vectors.
        let mut keys = Vec::new();
        // One head's values, `[n][dim rounded up to a block]`.
        let mut values = Vec::new();
        // A tile's scores, `[QUERIES][n rounded up]`.
        let mut scores = Vec::new();
        let mut tile = vec![0f32; block];
        let mut start = 0;
        for &n in self.lengths {
            let tokens = start..start + n;
            let padded_n = n.next_multiple_of(key_block);
            scores.clear();
            scores.resize(QUERIES * padded_n, 0f32);
            keys.clear();
            keys.resize(dim * padded_n, 0f32);
            values.clear();
            values.resize(n * padded_dim, 0f32);
            for head in 0..self.heads {
                let at = head * dim;
                for (j, t) in tokens.clone().enumerate() {
                    let r = row(t);
                    for (c, &k) in r[hidden + at..hidden + at + dim].iter().enumerate() {
                        keys[c * padded_n + j] = k;
                    }
                    values[j * padded_dim..j * padded_dim + dim]
                        .copy_from_slice(&r[2 * hidden + at..2 * hidden + at + dim]);
                }
                for first_query in tokens.clone().step_by(QUERIES) {
                    let live = QUERIES.min(tokens.end - first_query);
                    // Queries past the sequence's end repeat its last one; they are not stored.
                    let queries: [&[f32]; QUERIES] =
                        std::array::from_fn(|q| &row(first_query + q.min(live - 1))[at..at + dim]);
                    for first in (0..padded_n).step_by(key_block) {
                        let mut acc = [[zero; 4]; QUERIES];
                        for c in 0..dim {
                            let at = c * padded_n + first;
                            let (k, _) = S::as_simd_f32s(&keys[at..at + key_block]);
                            for (acc, query) in acc.iter_mut().zip(&queries) {
                                let qc = simd.splat_f32s(query[c]);
                                for (acc, &k) in acc.iter_mut().zip(k) {
                                    *acc = simd.mul_add_e_f32s(qc, k, *acc);
                                }
                            }
                        }
                        for (q, acc) in acc.iter().enumerate() {
                            let at = q * padded_n + first;
                            S::as_mut_simd_f32s(&mut scores[at..at + key_block])
                                .0
                                .copy_from_slice(acc);
                        }
                    }
                    let mut scale = [0f32; QUERIES];
                    for (q, scale) in scale.iter_mut().enumerate() {
                        *scale = exp_shifted(&mut scores[q * padded_n..q * padded_n + n]);
                    }
                    for first in (0..padded_dim).step_by(block) {
                        let mut acc = [[zero; 2]; QUERIES];
                        for j in 0..n {
                            let (v, _) =
                                S::as_simd_f32s(&values[j * padded_dim + first..][..block]);
                            for (q, acc) in acc.iter_mut().enumerate() {
                                let p = simd.splat_f32s(scores[q * padded_n + j]);
                                acc[0] = simd.mul_add_e_f32s(p, v[0], acc[0]);
                                acc[1] = simd.mul_add_e_f32s(p, v[1], acc[1]);
                            }
                        }
                        let width = block.min(dim - first);
                        for (q, acc) in acc.iter().take(live).enumerate() {
                            let s = simd.splat_f32s(scale[q]);
                            let (out, _) = S::as_mut_simd_f32s(&mut tile);
                            out[0] = simd.mul_f32s(acc[0], s);
                            out[1] = simd.mul_f32s(acc[1], s);
                            let at = (first_query + q) * hidden + at + first;
                            self.out[at..at + width].copy_from_slice(&tile[..width]);
                        }
                    }
                }
            }
            start += n;
        }
    }
}

/// A linear layer's weights packed once for [`dense`]: column panels of two SIMD vectors' width,
/// each `[inputs][width]` contiguous, so the inner loop reads them in order and nothing is
/// packed again per call (candle's matmul packs its right-hand side every time).
#[derive(Debug)]
pub struct Packed {
    panels: Vec<f32>,
    bias: Vec<f32>,
    inputs: usize,
    outputs: usize,
    /// Columns per panel: two vectors of the instruction set chosen at load.
    width: usize,
}

impl Packed {
    /// Packs `weight` `[inputs, outputs]` and `bias` `[outputs]`.
    pub fn new(weight: &Tensor, bias: &Tensor) -> candle_core::Result<Self> {
        let (inputs, outputs) = weight.dims2()?;
        let rows: Vec<Vec<f32>> = weight.to_vec2()?;
        let width = 2 * pulp::Arch::new().dispatch(Lanes);
        let panels_n = outputs.div_ceil(width);
        let mut panels = vec![0f32; panels_n * inputs * width];
        for (k, row) in rows.iter().enumerate() {
            for (n, &w) in row.iter().enumerate() {
                panels[(n / width * inputs + k) * width + n % width] = w;
            }
        }
        Ok(Self {
            panels,
            bias: bias.to_vec1()?,
            inputs,
            outputs,
            width,
        })
    }
}

struct Lanes;

impl pulp::WithSimd for Lanes {
    type Output = usize;

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) -> usize {
        S::F32_LANES
    }
}

/// `x · W + b` for `x` `[rows, inputs]` into `out`, then exact GELU if `gelu`: one pass over the
/// output, each tile (12 or 6 rows × 2 vectors) accumulated in registers from the bias on.
pub fn dense(x: &[f32], p: &Packed, gelu: bool, out: &mut Vec<f32>) -> candle_core::Result<()> {
    if !x.len().is_multiple_of(p.inputs.max(1)) {
        candle_core::bail!(
            "dense: {} values are not rows of {} features",
            x.len(),
            p.inputs
        );
    }
    let arch = pulp::Arch::new();
    // The kernel reads panels of two vectors of the instruction set it runs with.
    if p.width != 2 * arch.dispatch(Lanes) {
        candle_core::bail!("dense: weights packed for another instruction set");
    }
    // Every element is written below: a buffer of the same size is not cleared.
    out.resize(x.len() / p.inputs.max(1) * p.outputs, 0.0);
    arch.dispatch(DenseKernel { x, out, p, gelu });
    Ok(())
}

/// Quantises a linear layer for [`dense_int8`]: `weight` `[inputs, outputs]` in blocks of 32 inputs
/// on their own integer grid (for a 4-bit model, its own codes), `bias` `[outputs]`.
pub fn quantize(weight: &Tensor, bias: &Tensor) -> candle_core::Result<Weights> {
    let (inputs, outputs) = weight.dims2()?;
    let values: Vec<f32> = weight.flatten_all()?.to_vec1()?;
    Ok(Weights::quantize(
        &values,
        &bias.to_vec1::<f32>()?,
        inputs,
        outputs,
    ))
}

/// [`dense`] in int8: the rows quantised per block of 32 to int8 (into `codes`, reused),
/// multiplied by the quantised weights in integers, the bias added as they are stored
/// ([`aion_simd::int8`]), then GELU in f32 if `gelu`.
pub fn dense_int8(
    x: &[f32],
    w: &Weights,
    gelu: bool,
    codes: &mut Activations,
    out: &mut Vec<f32>,
) -> candle_core::Result<()> {
    let inputs = w.inputs();
    if !x.len().is_multiple_of(inputs.max(1)) {
        candle_core::bail!(
            "dense: {} values are not rows of {inputs} features",
            x.len()
        );
    }
    codes.quantize(x, x.len() / inputs.max(1), inputs);
    aion_simd::int8::matmul(codes, w, out);
    if gelu {
        pulp::Arch::new().dispatch(Gelu(out));
    }
    Ok(())
}

/// Exact GELU in place, vectorised inside `pulp`'s dispatch.
struct Gelu<'a>(&'a mut [f32]);

impl pulp::WithSimd for Gelu<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        for v in self.0.iter_mut() {
            *v = gelu_erf_scalar(*v);
        }
    }
}

/// Rows of the largest tile.
const MAX_TILE_ROWS: usize = 12;
/// Input bytes of the rows one pass of the panels covers: a quarter of a typical 1 MiB L2.
const CHUNK_BYTES: usize = 256 * 1024;

struct DenseKernel<'a> {
    x: &'a [f32],
    out: &'a mut [f32],
    p: &'a Packed,
    gelu: bool,
}

impl pulp::WithSimd for DenseKernel<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, simd: S) {
        // As many rows as leave the accumulators in registers: 32 vector registers with
        // AVX-512, 16 with AVX2.
        if S::F32_LANES >= 16 {
            self.tiles::<S, 12>(simd);
        } else {
            self.tiles::<S, 6>(simd);
        }
    }
}

impl DenseKernel<'_> {
    /// Tiles of `ROWS` rows × 2 vectors.
    #[inline(always)]
    fn tiles<S: pulp::Simd, const ROWS: usize>(self, simd: S) {
        let p = self.p;
        let (inputs, outputs, width) = (p.inputs, p.outputs, p.width);
        let rows = self.x.len() / inputs;
        let mut tile = [0f32; MAX_TILE_ROWS * 64];
        // Rows in chunks whose inputs stay in the core's L2 cache while every panel passes over
        // them (all of a long batch's rows would be read again from L3 for each panel).
        let chunk = (CHUNK_BYTES / (4 * inputs)).max(1).next_multiple_of(ROWS);
        for chunk_start in (0..rows).step_by(chunk) {
            let chunk_rows = chunk_start..rows.min(chunk_start + chunk);
            for (panel_index, panel) in p.panels.chunks_exact(inputs * width).enumerate() {
                let (panel, _) = S::as_simd_f32s(panel);
                let col = panel_index * width;
                let cols = width.min(outputs - col);
                let mut bias = [0f32; 64];
                bias[..cols].copy_from_slice(&p.bias[col..col + cols]);
                let (bias, _) = S::as_simd_f32s(&bias[..width]);
                let (b0, b1) = (bias[0], bias[1]);
                for first in chunk_rows.clone().step_by(ROWS) {
                    let n = ROWS.min(chunk_rows.end - first);
                    let mut acc = [[b0, b1]; ROWS];
                    // Every row slice and the panel exactly `inputs` long: the loop's index checks
                    // then fold away.
                    let x: [&[f32]; ROWS] = std::array::from_fn(|r| {
                        let row = first + r.min(n - 1);
                        &self.x[row * inputs..][..inputs]
                    });
                    let panel = &panel[..2 * inputs];
                    for k in 0..inputs {
                        let (w0, w1) = (panel[2 * k], panel[2 * k + 1]);
                        for (acc, x) in acc.iter_mut().zip(&x) {
                            let a = simd.splat_f32s(x[k]);
                            acc[0] = simd.mul_add_e_f32s(a, w0, acc[0]);
                            acc[1] = simd.mul_add_e_f32s(a, w1, acc[1]);
                        }
                    }
                    for (r, acc) in acc.iter().take(n).enumerate() {
                        let t = &mut tile[r * width..(r + 1) * width];
                        let (t, _) = S::as_mut_simd_f32s(t);
                        t[0] = acc[0];
                        t[1] = acc[1];
                    }
                    for r in 0..n {
                        let t = &mut tile[r * width..r * width + cols];
                        if self.gelu {
                            for v in t.iter_mut() {
                                *v = gelu_erf_scalar(*v);
                            }
                        }
                        let at = (first + r) * outputs + col;
                        self.out[at..at + cols].copy_from_slice(t);
                    }
                }
            }
        }
    }
}

/// GELU's tanh approximation in place, as candle's `gelu` computes it (for models configured with
/// `gelu_new`; exact GELU is fused into the dense kernels).
pub fn gelu_tanh(xs: &mut [f32]) {
    const SQRT_TWO_OVER_PI: f32 = 0.797_884_6;
    for v in xs {
        *v = 0.5 * *v * (1.0 + (SQRT_TWO_OVER_PI * *v * (1.0 + 0.044_715 * *v * *v)).tanh());
    }
}

#[inline(always)]
fn gelu_erf_scalar(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// `LayerNorm(x + residual)` over rows of `weight.len()` features into `out`, in one pass per
/// row (candle's add and layer norm are two ops, each a full pass and an allocation).
pub fn add_layer_norm(
    x: &[f32],
    residual: &[f32],
    norm: &LayerNorm,
    out: &mut Vec<f32>,
) -> candle_core::Result<()> {
    let width = norm.weight.len();
    if x.len() != residual.len() || !x.len().is_multiple_of(width.max(1)) {
        candle_core::bail!(
            "add_layer_norm: {} + {} values over {width} features",
            x.len(),
            residual.len()
        );
    }
    // Filled row by row, not zeroed first.
    out.clear();
    pulp::Arch::new().dispatch(AddNormRows {
        x,
        residual,
        out,
        norm,
    });
    Ok(())
}

/// A layer norm's parameters as the CPU kernel reads them.
pub struct LayerNorm {
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    pub eps: f32,
}

struct AddNormRows<'a> {
    x: &'a [f32],
    residual: &'a [f32],
    out: &'a mut Vec<f32>,
    norm: &'a LayerNorm,
}

impl pulp::WithSimd for AddNormRows<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        let (weight, bias) = (&self.norm.weight, &self.norm.bias);
        let width = weight.len().max(1);
        let rows = self
            .x
            .chunks_exact(width)
            .zip(self.residual.chunks_exact(width));
        for (x, r) in rows {
            let at = self.out.len();
            self.out.extend(x.iter().zip(r).map(|(x, r)| x + r));
            let out = &mut self.out[at..];
            let mean = sum(out) / width as f32;
            for o in out.iter_mut() {
                *o -= mean;
            }
            let mut squares = [0f32; 16];
            let chunks = out.chunks_exact(16);
            let tail: f32 = chunks.remainder().iter().map(|o| o * o).sum();
            for chunk in chunks {
                for (l, o) in squares.iter_mut().zip(chunk) {
                    *l += o * o;
                }
            }
            let variance = (squares.iter().sum::<f32>() + tail) / width as f32;
            let inverse = 1.0 / (variance + self.norm.eps).sqrt();
            for ((o, w), b) in out.iter_mut().zip(weight).zip(bias) {
                *o = *o * inverse * w + b;
            }
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

/// Softmax of rows of `width`, inlined into `pulp`'s target-feature function: `with_simd` is
/// `inline(always)` (a plain closure there would not be inlined, and its `mul_add` would become a
/// libm call).
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
            d.copy_from_slice(s);
            let scale = exp_shifted(d);
            for d in d.iter_mut() {
                *d *= scale;
            }
        }
    }
}

/// Replaces each x by e^(x − max) and returns the reciprocal of their sum: a softmax but for the
/// last scaling, which callers fuse into what they do next.
#[inline(always)]
fn exp_shifted(xs: &mut [f32]) -> f32 {
    let max = max(xs);
    // Summed as they are written, in 16 independent lanes (the order of [`sum`]).
    let mut lanes = [0f32; 16];
    let mut chunks = xs.chunks_exact_mut(16);
    for chunk in &mut chunks {
        for (l, x) in lanes.iter_mut().zip(chunk) {
            *x = exp(*x - max);
            *l += *x;
        }
    }
    let mut tail = 0f32;
    for x in chunks.into_remainder() {
        *x = exp(*x - max);
        tail += *x;
    }
    1.0 / (lanes.iter().sum::<f32>() + tail)
}

/// The largest value, in 16 independent lanes: a comparison and a select per lane vectorise, a
/// fold of `f32::max` (whose NaN rule is not the instruction's) is one serial chain.
#[inline(always)]
fn max(xs: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 16];
    let chunks = xs.chunks_exact(16);
    let tail = chunks
        .remainder()
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    for chunk in chunks {
        for (l, &x) in lanes.iter_mut().zip(chunk) {
            *l = if x > *l { x } else { *l };
        }
    }
    lanes.into_iter().fold(tail, f32::max)
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
    let mut p = -2.726_142e-10_f32;
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
    let r = (-n).mul_add(expf::LN2_HIGH, x);
    let r = (-n).mul_add(expf::LN2_LOW, r);
    let mut p = expf::P[0];
    for &c in &expf::P[1..] {
        p = p.mul_add(r, c);
    }
    let p = p * r * r + r + 1.0;
    // 2ⁿ from the exponent bits. n + 127 is within [1, 254] after the clamp; adding 2²³ puts it in
    // the low mantissa bits, so no float-to-int conversion is needed (a saturating `as i32`
    // keeps the loop from vectorising).
    p * f32::from_bits((n + (127.0 + 8_388_608.0)).to_bits() << 23)
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

    /// The values of a tensor, row-major.
    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    /// The largest difference between `ours` and a tensor's values.
    fn max_diff(ours: &[f32], theirs: &Tensor) -> f32 {
        assert_eq!(ours.len(), theirs.elem_count());
        ours.iter()
            .zip(values(theirs))
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
    }

    #[test]
    fn ops_equal_candles_on_random_input() {
        let xs = Tensor::randn(0f32, 3.0, (7, 37), &candle_core::Device::Cpu).unwrap();
        let ours = softmax_last_dim(&xs).unwrap();
        let theirs = candle_nn::ops::softmax_last_dim(&xs).unwrap();
        assert!(max_diff(&values(&ours), &theirs) < 1e-6);
        let mut ours = values(&xs);
        gelu_tanh(&mut ours);
        assert!(max_diff(&ours, &xs.gelu().unwrap()) < 1e-6);
        // Head widths of 6 (a partial vector) and 32 (the shipped model's).
        for (heads, dim) in [(4, 6), (12, 32)] {
            let width = 3 * dim * heads;
            let qkv = Tensor::randn(0f32, 1.0, (120, width), &candle_core::Device::Cpu).unwrap();
            let lengths = [1, 13, 26, 80];
            let reference = attention_by_matmuls(&qkv, &lengths, heads).unwrap();
            // Into a buffer that held other values: every element is written.
            let mut ours = vec![f32::NAN; 7];
            attention(&values(&qkv), &lengths, heads, false, &mut ours).unwrap();
            assert!(max_diff(&ours, &reference) < 1e-5);
            // The second product in bf16: probabilities and values rounded to 8 bits of
            // mantissa, sums in f32. Queries scaled as the encoder scales them (by 1/√dim, folded
            // into their weights).
            if aion_simd::bf16::available() {
                let hidden = dim * heads;
                let scale = Tensor::cat(
                    &[
                        Tensor::full((dim as f32).sqrt().recip(), hidden, qkv.device()).unwrap(),
                        Tensor::ones(2 * hidden, candle_core::DType::F32, qkv.device()).unwrap(),
                    ],
                    0,
                )
                .unwrap();
                let qkv = qkv.broadcast_mul(&scale).unwrap();
                let reference = attention_by_matmuls(&qkv, &lengths, heads).unwrap();
                let mut bf16 = vec![f32::NAN; 7];
                attention(&values(&qkv), &lengths, heads, true, &mut bf16).unwrap();
                let diff = max_diff(&bf16, &reference);
                eprintln!("attention with bf16 context, {heads} heads of {dim}: max |Δ| {diff}");
                assert!(diff < 0.02, "attention with bf16 context off by {diff}");
            }
        }
    }

    /// The packed dense layer against candle's matmul, at shapes that leave partial tiles and
    /// partial panels, with and without the fused GELU.
    #[test]
    fn add_layer_norm_equals_candles_add_then_layer_norm() {
        let cpu = candle_core::Device::Cpu;
        let x = Tensor::randn(0.5f32, 2.0, (7, 384), &cpu).unwrap();
        let r = Tensor::randn(0f32, 1.0, (7, 384), &cpu).unwrap();
        let w = Tensor::randn(1f32, 0.1, 384, &cpu).unwrap();
        let b = Tensor::randn(0f32, 0.1, 384, &cpu).unwrap();
        let norm = LayerNorm {
            weight: values(&w),
            bias: values(&b),
            eps: 1e-12,
        };
        let mut ours = vec![f32::NAN; 7];
        add_layer_norm(&values(&x), &values(&r), &norm, &mut ours).unwrap();
        let theirs = candle_nn::ops::layer_norm(&(&x + &r).unwrap(), &w, &b, 1e-12).unwrap();
        assert!(max_diff(&ours, &theirs) < 1e-5);
    }

    #[test]
    fn dense_equals_matmul_plus_bias() {
        let cpu = candle_core::Device::Cpu;
        for (rows, inputs, outputs) in [(1, 8, 35), (13, 37, 64), (40, 384, 70)] {
            let x = Tensor::randn(0f32, 1.0, (rows, inputs), &cpu).unwrap();
            let w = Tensor::randn(0f32, 0.3, (inputs, outputs), &cpu).unwrap();
            let b = Tensor::randn(0f32, 1.0, outputs, &cpu).unwrap();
            let packed = Packed::new(&w, &b).unwrap();
            let want = x.matmul(&w).unwrap().broadcast_add(&b).unwrap();
            let mut plain = vec![f32::NAN; 3];
            dense(&values(&x), &packed, false, &mut plain).unwrap();
            assert!(max_diff(&plain, &want) < 1e-4, "{rows}x{inputs}x{outputs}");
            let mut gelu = vec![f32::NAN; 3];
            dense(&values(&x), &packed, true, &mut gelu).unwrap();
            assert!(
                max_diff(&gelu, &want.gelu_erf().unwrap()) < 1e-4,
                "{rows}x{inputs}x{outputs}"
            );
        }
    }
}
