//! 4-bit NormalFloat (NF4) storage of frozen weights, as in QLoRA (Dettmers et al. 2023,
//! arXiv:2305.14314) and bitsandbytes' `quantize_4bit(quant_type="nf4")`: blocks of 64 values
//! scaled by their absolute maximum, each value replaced by the nearest of 16 code values, two codes
//! per byte (first value in the high nibble, as bitsandbytes packs). With double quantisation the
//! f32 block scales are themselves stored as 8-bit codes of bitsandbytes' dynamic map in blocks of
//! 256 around their mean (`compress_statistics=True`).
//!
//! [`Nf4Linear`] multiplies by such a weight. On the CPU inside a candle custom op: the f32 weight
//! exists only while the op runs (forward, and again in backward for the input gradient), never
//! between uses. On any other device with candle's differentiable ops (dequantise, then matmul):
//! the same values, but autograd keeps each layer's dequantised weight until backward. The base
//! weight gets no gradient either way.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor};

use crate::{Error, Result};

/// bitsandbytes' NF4 code values (`bitsandbytes/functional.py`, `get_4bit_type("nf4")`), digits
/// kept as printed there.
#[allow(clippy::excessive_precision)]
pub const NF4_CODES: [f32; 16] = [
    -1.0,
    -0.696_192_800_998_687_7,
    -0.525_073_051_452_636_7,
    -0.394_917_488_098_144_5,
    -0.284_441_381_692_886_35,
    -0.184_773_430_228_233_34,
    -0.091_050_036_251_544_95,
    0.0,
    0.079_580_299_556_255_34,
    0.160_930_201_411_247_25,
    0.246_112_301_945_686_34,
    0.337_915_241_718_292_24,
    0.440_709_829_330_444_34,
    0.562_617_003_917_694_1,
    0.722_956_836_223_602_3,
    1.0,
];

/// Values per absmax block (bitsandbytes' default `blocksize=64` for 4-bit).
pub const BLOCK: usize = 64;
/// Block scales per 8-bit block in double quantisation (bitsandbytes uses 256).
pub const SCALE_BLOCK: usize = 256;

/// How the block scales are kept.
#[derive(Debug, Clone)]
enum Scales {
    /// `[blocks, 1]` f32.
    F32(Tensor),
    /// `absmax[i] ≈ DYNAMIC_MAP[codes[i]] * nested[i / 256] + offset`; codes u8 `[blocks]`,
    /// nested f32 `[blocks / 256]`.
    Double {
        codes: Tensor,
        nested: Tensor,
        offset: f32,
    },
}

/// A 2-D weight `[out, in]` in NF4. Unpacking goes through candle ops (a 256-entry byte → code
/// pair table) so it runs at the speed of the optimised dependency in every build profile.
#[derive(Debug, Clone)]
pub struct Nf4Tensor {
    rows: usize,
    cols: usize,
    /// u8 `[padded / 2]`, padded to whole blocks with zero codes.
    packed: Tensor,
    scales: Scales,
}

/// Index of the nearest value in a sorted table.
fn nearest(table: &[f32], x: f32) -> usize {
    let i = table.partition_point(|&c| c < x);
    if i == 0 {
        0
    } else if i == table.len() || x - table[i - 1] <= table[i] - x {
        i - 1
    } else {
        i
    }
}

/// bitsandbytes' `create_dynamic_map(signed=True)`: 8-bit dynamic tree quantisation codes, sorted.
fn dynamic_map() -> Vec<f32> {
    let mut data = Vec::with_capacity(256);
    for i in 0..7 {
        let items = (1usize << i) + 1;
        let step = 0.9 / (items - 1) as f64;
        let scale = 10f64.powi(i - 6);
        for k in 0..items - 1 {
            let lo = 0.1 + step * k as f64;
            let mean = (lo + lo + step) / 2.0;
            data.push((scale * mean) as f32);
            data.push((-scale * mean) as f32);
        }
    }
    data.push(0.0);
    data.push(1.0);
    data.sort_by(f32::total_cmp);
    data
}

/// `[256, 2]`: the two code values a packed byte holds (high nibble first). Indexed with u32 ids:
/// candle's `index_select` treats a u8 id of 255 as out of range and yields zeros.
fn byte_table(device: &Device) -> Result<Tensor> {
    let table: Vec<f32> = (0..256usize)
        .flat_map(|b| [NF4_CODES[b >> 4], NF4_CODES[b & 0x0f]])
        .collect();
    Ok(Tensor::from_vec(table, (256, 2), device)?)
}

impl Nf4Tensor {
    /// Quantises a row-major `[rows, cols]` matrix.
    pub fn quantize(data: &[f32], rows: usize, cols: usize, double_quant: bool) -> Result<Self> {
        if data.len() != rows * cols {
            return Err(Error::Invalid(format!(
                "nf4: {} values for a [{rows}, {cols}] matrix",
                data.len()
            )));
        }
        let blocks = data.len().div_ceil(BLOCK);
        // Code 7 is 0.0: the padding of the last block dequantises to zeros.
        let mut packed = vec![0x77u8; blocks * BLOCK / 2];
        let mut absmax = Vec::with_capacity(blocks);
        for (b, block) in data.chunks(BLOCK).enumerate() {
            let m = block.iter().fold(0f32, |m, x| m.max(x.abs()));
            absmax.push(m);
            let inv = if m > 0.0 { 1.0 / m } else { 0.0 };
            for (pair, byte) in block.chunks(2).zip(&mut packed[b * BLOCK / 2..]) {
                let hi = nearest(&NF4_CODES, pair[0] * inv) as u8;
                let lo = pair
                    .get(1)
                    .map_or(7, |&x| nearest(&NF4_CODES, x * inv) as u8);
                *byte = (hi << 4) | lo;
            }
        }
        let scales = if double_quant {
            let offset = absmax.iter().sum::<f32>() / blocks.max(1) as f32;
            let map = dynamic_map();
            let mut codes = Vec::with_capacity(blocks);
            let mut nested = Vec::with_capacity(blocks.div_ceil(SCALE_BLOCK));
            for block in absmax.chunks(SCALE_BLOCK) {
                let m = block.iter().fold(0f32, |m, x| m.max((x - offset).abs()));
                nested.push(m);
                let inv = if m > 0.0 { 1.0 / m } else { 0.0 };
                codes.extend(
                    block
                        .iter()
                        .map(|x| nearest(&map, (x - offset) * inv) as u8),
                );
            }
            let n = nested.len();
            Scales::Double {
                codes: Tensor::from_vec(codes, blocks, &Device::Cpu)?,
                nested: Tensor::from_vec(nested, n, &Device::Cpu)?,
                offset,
            }
        } else {
            Scales::F32(Tensor::from_vec(absmax, (blocks, 1), &Device::Cpu)?)
        };
        let n = packed.len();
        Ok(Self {
            rows,
            cols,
            packed: Tensor::from_vec(packed, n, &Device::Cpu)?,
            scales,
        })
    }

    pub fn dims(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// The same weight with its codes and scales on `device` (quantisation runs on the CPU).
    pub fn to_device(&self, device: &Device) -> Result<Self> {
        let scales = match &self.scales {
            Scales::F32(a) => Scales::F32(a.to_device(device)?),
            Scales::Double {
                codes,
                nested,
                offset,
            } => Scales::Double {
                codes: codes.to_device(device)?,
                nested: nested.to_device(device)?,
                offset: *offset,
            },
        };
        Ok(Self {
            rows: self.rows,
            cols: self.cols,
            packed: self.packed.to_device(device)?,
            scales,
        })
    }

    /// The block scales `[blocks, 1]` as [`Self::dequantize_tensor`] uses them (after double
    /// dequantisation if any).
    fn scales(&self) -> Result<Tensor> {
        match &self.scales {
            Scales::F32(a) => Ok(a.clone()),
            Scales::Double {
                codes,
                nested,
                offset,
            } => {
                let blocks = codes.dim(0)?;
                let map = Tensor::from_vec(dynamic_map(), 256, codes.device())?;
                let nested = nested
                    .reshape((nested.dim(0)?, 1))?
                    .broadcast_as((nested.dim(0)?, SCALE_BLOCK))?
                    .flatten_all()?
                    .narrow(0, 0, blocks)?;
                let absmax = ((map.index_select(&codes.to_dtype(DType::U32)?, 0)? * nested)?
                    + f64::from(*offset))?;
                Ok(absmax.reshape((blocks, 1))?)
            }
        }
    }

    /// The block scales, one per 64 values.
    pub fn absmax(&self) -> Result<Vec<f32>> {
        Ok(self.scales()?.flatten_all()?.to_vec1()?)
    }

    /// The f32 matrix as a `[rows, cols]` tensor.
    pub fn dequantize_tensor(&self) -> Result<Tensor> {
        let scales = self.scales()?;
        let blocks = scales.dim(0)?;
        let values = byte_table(self.packed.device())?
            .index_select(&self.packed.to_dtype(DType::U32)?, 0)?
            .reshape((blocks, BLOCK))?
            .broadcast_mul(&scales)?
            .flatten_all()?
            .narrow(0, 0, self.rows * self.cols)?;
        Ok(values.reshape((self.rows, self.cols))?)
    }

    /// The f32 matrix, row-major.
    pub fn dequantize(&self) -> Result<Vec<f32>> {
        Ok(self.dequantize_tensor()?.flatten_all()?.to_vec1()?)
    }

    /// Bytes held: packed codes plus scales.
    pub fn storage_bytes(&self) -> usize {
        self.packed.elem_count()
            + match &self.scales {
                Scales::F32(a) => 4 * a.elem_count(),
                Scales::Double { codes, nested, .. } => {
                    codes.elem_count() + 4 * nested.elem_count() + 4
                }
            }
    }
}

/// A frozen linear layer `y = x Wᵀ` with `W` in NF4.
#[derive(Debug, Clone)]
pub struct Nf4Linear {
    weight: Arc<Nf4Tensor>,
}

impl Nf4Linear {
    pub fn new(weight: Nf4Tensor) -> Self {
        Self {
            weight: Arc::new(weight),
        }
    }

    pub fn weight(&self) -> &Nf4Tensor {
        &self.weight
    }

    /// `x`: `[..., in]` → `[..., out]` in `x`'s dtype, on the device the weight is on: the
    /// custom op for f32 on the CPU, [`Nf4Linear::forward_by_tensor_ops`] otherwise.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.device().is_cpu() && x.dtype() == DType::F32 {
            Ok(x.apply_op1(Nf4Matmul(self.weight.clone()))?)
        } else {
            self.forward_by_tensor_ops(x)
        }
    }

    /// The device-generic path: the weight dequantised with tensor ops (byte → code pair gather,
    /// block scale) in `x`'s dtype, then a matmul that autograd differentiates.
    pub(crate) fn forward_by_tensor_ops(&self, x: &Tensor) -> Result<Tensor> {
        let w = self.weight.dequantize_tensor()?.to_dtype(x.dtype())?;
        Ok(x.broadcast_matmul(&w.t()?)?)
    }
}

/// The custom op behind [`Nf4Linear`]. candle's own quantised matmul has no backward pass, so the
/// dequantised weight is recomputed in `bwd` rather than kept.
struct Nf4Matmul(Arc<Nf4Tensor>);

impl CustomOp1 for Nf4Matmul {
    fn name(&self) -> &'static str {
        "nf4-matmul"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, cols) = self.0.dims();
        let dims = layout.dims();
        let Some((&inner, outer)) = dims.split_last() else {
            candle_core::bail!("nf4-matmul: scalar input");
        };
        if inner != cols {
            candle_core::bail!("nf4-matmul: input {dims:?} against weight [{rows}, {cols}]");
        }
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("nf4-matmul: f32 input only");
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("nf4-matmul: contiguous input only");
        };
        let n: usize = outer.iter().product();
        let x = Tensor::from_slice(&data[start..end], (n, cols), &Device::Cpu)?;
        let w = self
            .0
            .dequantize_tensor()
            .map_err(candle_core::Error::wrap)?;
        let y = x.matmul(&w.t()?)?.flatten_all()?.to_vec1::<f32>()?;
        let mut shape = outer.to_vec();
        shape.push(rows);
        Ok((CpuStorage::F32(y), Shape::from(shape)))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let w = self
            .0
            .dequantize_tensor()
            .map_err(candle_core::Error::wrap)?;
        Ok(Some(
            grad_res.broadcast_matmul(&w.to_device(arg.device())?)?,
        ))
    }
}

#[cfg(test)]
mod tests {
    #![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]
    use super::*;
    use candle_core::Var;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = StdRng::seed_from_u64(seed);
        // Heavy-ish tails like real weights, plus a few outliers that set block maxima.
        (0..n)
            .map(|i| {
                let x: f32 = rng.random_range(-1.0..1.0);
                if i % 97 == 0 {
                    x * 8.0
                } else {
                    x * x * x
                }
            })
            .collect()
    }

    /// The largest gap between neighbouring codes is between -1 and -0.696 (0.3038), so rounding
    /// to the nearest code errs by at most 0.1519 × the block's absmax.
    #[test]
    fn error_within_half_the_largest_code_gap_times_absmax() {
        let half_gap = NF4_CODES
            .windows(2)
            .map(|w| w[1] - w[0])
            .fold(0f32, f32::max)
            / 2.0;
        assert!((half_gap - 0.151_903_6).abs() < 1e-6);
        let (rows, cols) = (96, 200); // 19,200 values: 300 blocks, not a multiple of a row
        let data = random(rows * cols, 1);
        for double in [false, true] {
            let q = Nf4Tensor::quantize(&data, rows, cols, double).unwrap();
            let absmax = q.absmax().unwrap();
            let back = q.dequantize().unwrap();
            let mut worst = 0f32;
            for (i, (&x, &y)) in data.iter().zip(&back).enumerate() {
                let exact = data[i / BLOCK * BLOCK..((i / BLOCK + 1) * BLOCK).min(data.len())]
                    .iter()
                    .fold(0f32, |m, v| m.max(v.abs()));
                // With double quantisation the stored scale differs from the exact absmax too.
                let bound = half_gap * exact + (absmax[i / BLOCK] - exact).abs() + 1e-6;
                assert!((x - y).abs() <= bound, "{i}: {x} vs {y}, bound {bound}");
                worst = worst.max((x - y).abs() / exact);
            }
            eprintln!(
                "nf4 double_quant={double}: worst |err|/absmax = {worst:.4}, bytes {}",
                q.storage_bytes()
            );
        }
    }

    /// Each scale errs by at most half the widest gap of the 8-bit dynamic map (0.9/64 near ±1)
    /// times its 256-block's largest deviation from the mean scale.
    #[test]
    fn double_quantised_scales_are_close() {
        let data = random(64 * 1024, 2);
        let plain = Nf4Tensor::quantize(&data, 64, 1024, false)
            .unwrap()
            .absmax()
            .unwrap();
        let double = Nf4Tensor::quantize(&data, 64, 1024, true)
            .unwrap()
            .absmax()
            .unwrap();
        let offset = plain.iter().sum::<f32>() / plain.len() as f32;
        let half_gap = dynamic_map()
            .windows(2)
            .map(|w| w[1] - w[0])
            .fold(0f32, f32::max)
            / 2.0;
        assert!(half_gap < 0.0071, "{half_gap}");
        for (chunk_p, chunk_d) in plain.chunks(SCALE_BLOCK).zip(double.chunks(SCALE_BLOCK)) {
            let nested = chunk_p.iter().fold(0f32, |m, a| m.max((a - offset).abs()));
            for (a, b) in chunk_p.iter().zip(chunk_d) {
                assert!((a - b).abs() <= half_gap * nested + 1e-6, "{a} vs {b}");
            }
        }
    }

    #[test]
    fn dynamic_map_matches_bitsandbytes_shape() {
        let map = dynamic_map();
        assert_eq!(map.len(), 256);
        assert_eq!(map[255], 1.0);
        assert!(map.contains(&0.0));
        assert!(map.windows(2).all(|w| w[0] <= w[1]));
    }

    /// Forward equals a plain matmul with the dequantised weight, and backward gives the same
    /// input gradient as autograd through that matmul; the device-generic path (run here on the
    /// CPU) gives the same as the custom op.
    #[test]
    fn gradient_matches_plain_matmul() {
        let (out, inp) = (24, 128);
        let q = Nf4Tensor::quantize(&random(out * inp, 3), out, inp, true).unwrap();
        let w = q.dequantize_tensor().unwrap();
        let lin = Nf4Linear::new(q);
        let x = Var::from_tensor(
            &Tensor::from_vec(random(2 * 5 * inp, 4), (2, 5, inp), &Device::Cpu).unwrap(),
        )
        .unwrap();
        let probe = Tensor::from_vec(random(2 * 5 * out, 5), (2, 5, out), &Device::Cpu).unwrap();

        let y = lin.forward(x.as_tensor()).unwrap();
        let y_ref = lin.forward_by_tensor_ops(x.as_tensor()).unwrap();
        let y_plain = x.as_tensor().broadcast_matmul(&w.t().unwrap()).unwrap();
        let diff = (&y_ref - &y_plain)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
        let diff = (&y - &y_ref).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-5);

        let g = (y * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        let g_ref = (y_ref * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let (g, g_ref) = (g.get(&x).unwrap(), g_ref.get(&x).unwrap());
        let diff = (g - g_ref).unwrap().abs().unwrap().max_all().unwrap();
        assert!(
            diff.to_dtype(DType::F32)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                < 1e-5
        );
    }
}
