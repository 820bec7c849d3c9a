//! Int8 matrix products `x · W + b` for inference on the CPU, with the numerics of onnxruntime's
//! 4-bit `MatMulNBits` at `accuracy_level = 4`:
//! - **weights** are split into blocks of [`BLOCK`] inputs per output column, each block a scale
//!   and integer codes. A block that lies exactly on a grid of at most 63 steps (a 4-bit model's
//!   own codes, dequantised) keeps that grid, so its codes are the model's; any other block is
//!   rounded to 63 steps.
//! - **activations** are quantised per row and block of 32 to int8 with a scale of `max|x| / 127`.
//! - Each block's products are summed exactly in 32-bit integers, then scaled and accumulated in
//!   f32, block after block, with one fused multiply-add per block; the bias is added as the sums
//!   are stored (in a pass of its own it cost a read and write of the whole output).
//!
//! Four kernels, chosen at run time ([`Kernel::detect`]): AVX-512 VNNI, AVX-VNNI, AVX2 and
//! scalar. They compute the same operations in the same order, so their results are equal bit
//! for bit; the tests hold every kernel the CPU has to the scalar one.
//!
//! VNNI multiplies unsigned by signed bytes, so weight codes are stored shifted by 64 as `u8`, and
//! each block's integer sum starts from `-64 · Σ activation codes` (computed when the activations
//! are quantised), which cancels the shift at no cost in the inner loop. Weight codes stay within
//! ±63 so that AVX2's pairwise 16-bit sums (`127 · 127 · 2`) cannot saturate.

#[cfg(target_arch = "x86_64")]
mod x86;

use std::mem::MaybeUninit;

/// Inputs per quantisation block.
pub const BLOCK: usize = 32;
/// Inputs one 32-bit lane sums: VNNI's four byte products.
const GROUP: usize = 4;
/// Output columns per packed panel: one AVX-512 vector of 32-bit lanes.
const PANEL: usize = 16;
/// Bytes of one panel's codes for one block.
const PANEL_BLOCK: usize = PANEL * BLOCK;
/// The largest weight code.
const MAX_CODE: i32 = 63;
/// What weight codes are shifted by to be unsigned.
const SHIFT: i32 = 64;

/// An implementation of [`matmul`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// 512-bit `vpdpbusd` (AVX-512 VNNI).
    Avx512Vnni,
    /// 256-bit `vpdpbusd` (AVX-VNNI).
    AvxVnni,
    /// 256-bit `vpmaddubsw` + `vpmaddwd` (AVX2).
    Avx2,
    /// Plain Rust: the reference, and any other CPU.
    Scalar,
}

impl Kernel {
    /// Every kernel, fastest first.
    pub const ALL: [Kernel; 4] = [
        Kernel::Avx512Vnni,
        Kernel::AvxVnni,
        Kernel::Avx2,
        Kernel::Scalar,
    ];

    /// The fastest kernel this CPU runs.
    pub fn detect() -> Kernel {
        Self::ALL
            .into_iter()
            .find(|k| k.available())
            .unwrap_or(Kernel::Scalar)
    }

    /// Whether this CPU has the instructions of `self`.
    pub fn available(self) -> bool {
        match self {
            Kernel::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Vnni => x86::has_avx512_vnni(),
            #[cfg(target_arch = "x86_64")]
            Kernel::AvxVnni => x86::has_avx_vnni(),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => x86::has_avx2(),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// A short name, as metrics and benchmarks print it.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Avx512Vnni => "avx512-vnni",
            Kernel::AvxVnni => "avx-vnni",
            Kernel::Avx2 => "avx2",
            Kernel::Scalar => "scalar",
        }
    }
}

/// A linear layer's weight matrix `[inputs, outputs]` quantised and packed once, and its bias:
/// panels of 16 output columns; within a panel, block after block; within a block, groups of 4
/// inputs, each group the 16 columns' 4 codes side by side (what one `vpdpbusd` takes).
#[derive(Clone, Debug)]
pub struct Weights {
    inputs: usize,
    outputs: usize,
    blocks: usize,
    panels: usize,
    /// Codes plus [`SHIFT`].
    codes: Vec<u8>,
    /// `[panel][block][column]`.
    scales: Vec<f32>,
    /// `[panel][column]`: zero past `outputs`.
    bias: Vec<f32>,
}

impl Weights {
    /// Quantises `weight`, row-major `[inputs][outputs]` (inputs along the rows, as `x · W`
    /// reads it); `bias` is `[outputs]`.
    ///
    /// # Panics
    /// If `weight` does not hold `inputs · outputs` values, or `bias` `outputs`.
    pub fn quantize(weight: &[f32], bias: &[f32], inputs: usize, outputs: usize) -> Self {
        assert_eq!(
            weight.len(),
            inputs * outputs,
            "weight is not {inputs} × {outputs}"
        );
        assert_eq!(bias.len(), outputs, "bias is not {outputs} long");
        let blocks = inputs.div_ceil(BLOCK);
        let panels = outputs.div_ceil(PANEL);
        let mut codes = vec![SHIFT as u8; panels * blocks * PANEL_BLOCK];
        let mut scales = vec![0f32; panels * blocks * PANEL];
        let mut values = [0f32; BLOCK];
        for n in 0..outputs {
            let (panel, column) = (n / PANEL, n % PANEL);
            for b in 0..blocks {
                let ks = b * BLOCK..inputs.min((b + 1) * BLOCK);
                values.fill(0.0);
                for (v, k) in values.iter_mut().zip(ks) {
                    *v = weight[k * outputs + n];
                }
                let (scale, block_codes) = quantize_weight_block(&values);
                let at = (panel * blocks + b) * PANEL + column;
                scales[at] = scale;
                let base = (panel * blocks + b) * PANEL_BLOCK;
                for (i, &c) in block_codes.iter().enumerate() {
                    let (group, lane) = (i / GROUP, i % GROUP);
                    codes[base + (group * PANEL + column) * GROUP + lane] = (c + SHIFT) as u8;
                }
            }
        }
        let mut padded = vec![0f32; panels * PANEL];
        padded[..outputs].copy_from_slice(bias);
        Self {
            inputs,
            outputs,
            blocks,
            panels,
            codes,
            scales,
            bias: padded,
        }
    }

    /// Input features.
    pub fn inputs(&self) -> usize {
        self.inputs
    }

    /// Output features.
    pub fn outputs(&self) -> usize {
        self.outputs
    }

    /// The weight a code stands for, `[input][output]`: what [`matmul`] multiplies by.
    pub fn dequantized(&self, input: usize, output: usize) -> f32 {
        let (panel, column) = (output / PANEL, output % PANEL);
        let (b, i) = (input / BLOCK, input % BLOCK);
        let base = (panel * self.blocks + b) * PANEL_BLOCK;
        let code = i32::from(self.codes[base + (i / GROUP * PANEL + column) * GROUP + i % GROUP]);
        (code - SHIFT) as f32 * self.scales[(panel * self.blocks + b) * PANEL + column]
    }

    /// One panel's shifted codes and scales for one block.
    #[inline(always)]
    fn panel_block(&self, panel: usize, block: usize) -> (&[u8], &[f32]) {
        let at = panel * self.blocks + block;
        (
            &self.codes[at * PANEL_BLOCK..][..PANEL_BLOCK],
            &self.scales[at * PANEL..][..PANEL],
        )
    }

    /// One panel's bias.
    #[inline(always)]
    fn panel_bias(&self, panel: usize) -> &[f32] {
        &self.bias[panel * PANEL..][..PANEL]
    }
}

/// A block's scale and codes: the coarsest grid of at most [`MAX_CODE`] steps every value lies on
/// (to 1e-4 of a step), else [`MAX_CODE`] steps rounded.
fn quantize_weight_block(values: &[f32; BLOCK]) -> (f32, [i32; BLOCK]) {
    let max = values.iter().fold(0f32, |m, v| m.max(v.abs()));
    if max == 0.0 {
        return (0.0, [0; BLOCK]);
    }
    let on_grid = |steps: i32| {
        values.iter().all(|&v| {
            let x = v * steps as f32 / max;
            (x - x.round()).abs() <= 1e-4
        })
    };
    let steps = (1..=MAX_CODE).find(|&s| on_grid(s)).unwrap_or(MAX_CODE);
    let scale = max / steps as f32;
    let codes = values.map(|v| (v / scale).round().clamp(-MAX_CODE as f32, MAX_CODE as f32) as i32);
    (scale, codes)
}

/// Rows of activations `[rows, inputs]` quantised per block of 32 inputs.
#[derive(Clone, Debug, Default)]
pub struct Activations {
    rows: usize,
    inputs: usize,
    blocks: usize,
    /// `[row][blocks · BLOCK]`, zero past `inputs`.
    codes: Vec<i8>,
    /// `[row][block]`.
    scales: Vec<f32>,
    /// `[row][block]`: `-SHIFT · Σ codes`, where a block's integer sum starts.
    starts: Vec<i32>,
}

impl Activations {
    /// Quantises `x`, row-major `[rows][inputs]`, into this buffer: its memory is reused, so a
    /// forward that quantises every layer's input allocates once.
    ///
    /// # Panics
    /// If `x` does not hold `rows · inputs` values.
    pub fn quantize(&mut self, x: &[f32], rows: usize, inputs: usize) {
        assert_eq!(
            x.len(),
            rows * inputs,
            "activations are not {rows} × {inputs}"
        );
        self.reshape(rows, inputs);
        quantize_activations_fastest(x, self);
    }

    /// Room for `rows · inputs` activations. What it held stays until a quantiser overwrites it:
    /// each writes every code (a partial block's padding too), scale and start.
    fn reshape(&mut self, rows: usize, inputs: usize) {
        let blocks = inputs.div_ceil(BLOCK);
        (self.rows, self.inputs, self.blocks) = (rows, inputs, blocks);
        self.codes.resize(rows * blocks * BLOCK, 0);
        self.scales.resize(rows * blocks, 0.0);
        self.starts.resize(rows * blocks, 0);
    }

    /// Rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// One row's codes, scales and block starts.
    #[inline(always)]
    fn row(&self, row: usize) -> (&[i8], &[f32], &[i32]) {
        (
            &self.codes[row * self.blocks * BLOCK..][..self.blocks * BLOCK],
            &self.scales[row * self.blocks..][..self.blocks],
            &self.starts[row * self.blocks..][..self.blocks],
        )
    }
}

/// Every row of `x`, as its blocks with where their codes, scale and start go in `a`. (Rows of
/// blocks, not one flattened iterator: a `flat_map` here was not inlined into the quantisers and
/// cost a third as much as their arithmetic.)
#[inline(always)]
fn rows<'a>(
    x: &'a [f32],
    a: &'a mut Activations,
) -> impl Iterator<Item = impl Iterator<Item = (&'a [f32], &'a mut [i8], &'a mut f32, &'a mut i32)>>
{
    let width = a.blocks * BLOCK;
    x.chunks_exact(a.inputs.max(1))
        .zip(a.codes.chunks_exact_mut(width))
        .zip(a.scales.chunks_exact_mut(a.blocks))
        .zip(a.starts.chunks_exact_mut(a.blocks))
        .map(|(((row, codes), scales), starts)| {
            row.chunks(BLOCK)
                .zip(codes.chunks_exact_mut(BLOCK))
                .zip(scales.iter_mut())
                .zip(starts.iter_mut())
                .map(|(((values, codes), scale), start)| (values, codes, scale, start))
        })
}

/// The body of [`Activations::quantize`]: the widest quantiser this CPU runs.
fn quantize_activations_fastest(x: &[f32], a: &mut Activations) {
    #[cfg(target_arch = "x86_64")]
    if x86::has_avx512() {
        return x86::quantize_activations_avx512(x, a);
    } else if x86::has_avx2() {
        return x86::quantize_activations_avx2(x, a);
    }
    quantize_activations(x, a)
}

/// The body of [`Activations::quantize`] on CPUs without AVX2.
fn quantize_activations(x: &[f32], a: &mut Activations) {
    for row in rows(x, a) {
        for (values, codes, scale, start) in row {
            // Eight running maxima: a select per lane vectorises, a float `max` fold does not.
            let mut max = [0f32; 8];
            for (i, v) in values.iter().enumerate() {
                let a = v.abs();
                max[i % 8] = if a > max[i % 8] { a } else { max[i % 8] };
            }
            let max = max.into_iter().fold(0f32, f32::max);
            *scale = max / 127.0;
            let inverse = if max > 0.0 { 127.0 / max } else { 0.0 };
            let padded = values.iter().chain(std::iter::repeat(&0.0));
            for (c, &v) in codes.iter_mut().zip(padded) {
                *c = (v * inverse).round_ties_even() as i8;
            }
            *start = -SHIFT * codes.iter().map(|&c| i32::from(c)).sum::<i32>();
        }
    }
}

/// `x · W + b`, row-major `[rows][outputs]`, into `out` (its memory reused), with the fastest
/// kernel of this CPU.
///
/// # Panics
/// If the shapes do not match.
pub fn matmul(x: &Activations, w: &Weights, out: &mut Vec<f32>) {
    matmul_with(Kernel::detect(), x, w, out)
}

/// [`matmul`] with a chosen kernel.
///
/// # Panics
/// If the shapes do not match, or the CPU does not have the kernel's instructions.
pub fn matmul_with(kernel: Kernel, x: &Activations, w: &Weights, out: &mut Vec<f32>) {
    assert_eq!(
        x.inputs, w.inputs,
        "activations and weights differ in inputs"
    );
    assert!(
        kernel.available(),
        "this CPU cannot run the {} kernel",
        kernel.name()
    );
    let len = x.rows * w.outputs;
    // Not zeroed first: every kernel writes each output once, straight from its registers (a
    // zeroed output plus a copy out of a tile cost a sixth of the dense layers' time).
    out.clear();
    out.reserve(len);
    let spare = &mut out.spare_capacity_mut()[..len];
    if cfg!(test) {
        // An output a kernel missed then shows as NaN in the tests, not as stale memory.
        spare.fill(MaybeUninit::new(f32::NAN));
    }
    match kernel {
        Kernel::Scalar => scalar(x, w, spare),
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512Vnni => x86::avx512_vnni(x, w, spare),
        #[cfg(target_arch = "x86_64")]
        Kernel::AvxVnni => x86::avx_vnni(x, w, spare),
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => x86::avx2(x, w, spare),
        #[cfg(not(target_arch = "x86_64"))]
        _ => unreachable!("checked available"),
    }
    // SAFETY: each kernel stores every row's `outputs` columns: rows in tiles with the last
    // partial tile's rows stored too, columns in panels whose last one is stored masked.
    unsafe { out.set_len(len) };
}

/// The reference kernel: per block the exact integer sum, then one fused multiply-add; then the
/// bias.
fn scalar(x: &Activations, w: &Weights, out: &mut [MaybeUninit<f32>]) {
    for (row, out) in out.chunks_exact_mut(w.outputs.max(1)).enumerate() {
        let (codes, x_scales, starts) = x.row(row);
        for (n, out) in out.iter_mut().enumerate() {
            let (panel, column) = (n / PANEL, n % PANEL);
            let mut acc = 0f32;
            for (b, &x_scale) in x_scales.iter().enumerate() {
                let (w_codes, w_scales) = w.panel_block(panel, b);
                let mut sum = starts[b];
                for (i, &xc) in codes[b * BLOCK..][..BLOCK].iter().enumerate() {
                    let wc = w_codes[(i / GROUP * PANEL + column) * GROUP + i % GROUP];
                    sum += i32::from(xc) * i32::from(wc);
                }
                acc = (sum as f32).mul_add(w_scales[column] * x_scale, acc);
            }
            out.write(acc + w.bias[n]);
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::{rngs::StdRng, Rng, SeedableRng};

    use super::*;

    fn random(rng: &mut StdRng, n: usize) -> Vec<f32> {
        (0..n).map(|_| rng.random_range(-2.0f32..2.0)).collect()
    }

    fn quantized(x: &[f32], rows: usize, inputs: usize) -> Activations {
        let mut a = Activations::default();
        a.quantize(x, rows, inputs);
        a
    }

    fn product(kernel: Kernel, x: &Activations, w: &Weights) -> Vec<f32> {
        let mut out = Vec::new();
        matmul_with(kernel, x, w, &mut out);
        out
    }

    /// Every kernel this CPU has equals the scalar one bit for bit, on shapes with partial blocks,
    /// partial panels and row counts that leave partial tiles.
    #[test]
    fn every_available_kernel_equals_the_scalar_one() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut ran = Vec::new();
        for (rows, inputs, outputs) in [
            (1, 32, 16),
            (7, 64, 48),
            (13, 384, 1152),
            (5, 70, 23),
            (9, 1536, 384),
            (2, 31, 1),
            (0, 64, 32),
        ] {
            let weight = random(&mut rng, inputs * outputs);
            let w = Weights::quantize(&weight, &random(&mut rng, outputs), inputs, outputs);
            let x = quantized(&random(&mut rng, rows * inputs), rows, inputs);
            let reference = product(Kernel::Scalar, &x, &w);
            assert!(
                reference.iter().all(|v| !v.is_nan()),
                "scalar missed an output"
            );
            for kernel in Kernel::ALL.into_iter().filter(|k| k.available()) {
                // A missed output is NaN (see `matmul_with`), and NaN equals nothing.
                let out = product(kernel, &x, &w);
                let same = out
                    .iter()
                    .zip(&reference)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(
                    same,
                    "{} differs from scalar at {rows}×{inputs}×{outputs}",
                    kernel.name()
                );
                ran.push(kernel.name());
            }
        }
        ran.dedup();
        eprintln!("kernels run: {ran:?}");
    }

    /// Every vectorised activation quantiser this CPU runs gives the portable one's codes, scales
    /// and starts, halves rounded to even and partial blocks included; each writes all of them
    /// over a reused buffer's stale values.
    #[test]
    fn every_activation_quantiser_agrees_with_the_portable_one() {
        let mut rng = StdRng::seed_from_u64(10);
        let (rows, inputs) = (5, 100);
        let mut x = random(&mut rng, rows * inputs);
        // Values whose codes fall exactly halfway: 127 · v / max = k + 0.5.
        x[1] = 0.5 * 2.0 / 127.0;
        x[2] = 2.0;
        let quantized = |quantize: &dyn Fn(&[f32], &mut Activations)| {
            let mut a = Activations::default();
            a.reshape(rows + 1, inputs + 40);
            a.codes.fill(77);
            a.scales.fill(f32::NAN);
            a.starts.fill(-5);
            a.reshape(rows, inputs);
            quantize(&x, &mut a);
            a
        };
        let portable = quantized(&quantize_activations);
        let mut fresh = Activations::default();
        fresh.reshape(rows, inputs);
        quantize_activations(&x, &mut fresh);
        assert_eq!(portable.codes, fresh.codes);
        assert_eq!(portable.scales, fresh.scales);
        assert_eq!(portable.starts, fresh.starts);
        type Quantiser<'a> = &'a dyn Fn(&[f32], &mut Activations);
        let mut vectorised: Vec<(&str, Quantiser)> = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if x86::has_avx512() {
                vectorised.push(("avx512", &x86::quantize_activations_avx512));
            }
            if x86::has_avx2() {
                vectorised.push(("avx2", &x86::quantize_activations_avx2));
            }
        }
        for (name, quantize) in vectorised {
            let fast = quantized(quantize);
            assert_eq!(fast.codes, portable.codes, "{name}");
            assert_eq!(fast.scales, portable.scales, "{name}");
            assert_eq!(fast.starts, portable.starts, "{name}");
            eprintln!("{name} quantiser agrees");
        }
    }

    /// The scalar kernel computes what the module says: per block, the integer sum of the codes'
    /// products times both scales, plus the bias, against an f64 computation of the same codes.
    #[test]
    fn the_scalar_kernel_is_the_blockwise_definition() {
        let mut rng = StdRng::seed_from_u64(8);
        let (rows, inputs, outputs) = (3, 100, 20);
        let xs = random(&mut rng, rows * inputs);
        let bias = random(&mut rng, outputs);
        let w = Weights::quantize(&random(&mut rng, inputs * outputs), &bias, inputs, outputs);
        let x = quantized(&xs, rows, inputs);
        let out = product(Kernel::Scalar, &x, &w);
        for r in 0..rows {
            let (codes, scales, _) = x.row(r);
            for n in 0..outputs {
                let expected: f64 = f64::from(bias[n])
                    + (0..inputs)
                        .map(|k| {
                            let xq = f64::from(codes[k]) * f64::from(scales[k / BLOCK]);
                            xq * f64::from(w.dequantized(k, n))
                        })
                        .sum::<f64>();
                let got = f64::from(out[r * outputs + n]);
                assert!(
                    (got - expected).abs() < 1e-4 * (1.0 + expected.abs()),
                    "{got} vs {expected}"
                );
                // And the quantised product is near the float one.
                let float: f64 = f64::from(bias[n])
                    + (0..inputs)
                        .map(|k| f64::from(xs[r * inputs + k]) * f64::from(w.dequantized(k, n)))
                        .sum::<f64>();
                assert!(
                    (got - float).abs() < 0.05 * (1.0 + float.abs()),
                    "{got} vs {float}"
                );
            }
        }
    }

    /// Weights on a 4-bit grid (a 4-bit model dequantised: `(q - 8) · scale`) keep their codes:
    /// every weight is represented exactly.
    #[test]
    fn a_four_bit_model_keeps_its_own_codes() {
        let mut rng = StdRng::seed_from_u64(9);
        let (inputs, outputs) = (96, 40);
        let scales: Vec<f32> = (0..outputs * 3)
            .map(|_| rng.random_range(0.001f32..0.1))
            .collect();
        let weight: Vec<f32> = (0..inputs * outputs)
            .map(|i| {
                let (k, n) = (i / outputs, i % outputs);
                (rng.random_range(0..16) - 8) as f32 * scales[n * 3 + k / BLOCK]
            })
            .collect();
        let w = Weights::quantize(&weight, &vec![0.0; outputs], inputs, outputs);
        for k in 0..inputs {
            for n in 0..outputs {
                let (a, b) = (w.dequantized(k, n), weight[k * outputs + n]);
                assert!((a - b).abs() <= 2.0 * f32::EPSILON * b.abs(), "{a} vs {b}");
            }
        }
        // Off the grid: 63 steps, so within half a step of each block's largest value.
        let noisy: Vec<f32> = weight
            .iter()
            .map(|v| v + rng.random_range(-1e-3f32..1e-3))
            .collect();
        let w = Weights::quantize(&noisy, &vec![0.0; outputs], inputs, outputs);
        for k in 0..inputs {
            for n in 0..outputs {
                let block = (k / BLOCK * BLOCK..(k / BLOCK + 1) * BLOCK)
                    .map(|k| noisy[k * outputs + n].abs());
                let half_step = block.fold(0f32, f32::max) / (2.0 * 63.0);
                let err = (w.dequantized(k, n) - noisy[k * outputs + n]).abs();
                assert!(
                    err <= half_step * 1.001,
                    "error {err}, half a step {half_step}"
                );
            }
        }
    }

    #[test]
    fn zero_rows_and_blocks_give_zeros() {
        let w = Weights::quantize(&[0.0; 64 * 3], &[0.0; 3], 64, 3);
        let x = quantized(&[1.0; 2 * 64], 2, 64);
        let mut out = vec![f32::NAN; 100];
        matmul(&x, &w, &mut out);
        assert_eq!(out, vec![0.0; 6]);
    }
}
