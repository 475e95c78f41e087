//! GGML tensor types: their block layouts and host dequantization.
//!
//! Quantized types store a row as blocks of 32 (`Q4_0`, `Q4_1`, `Q8_0`) or
//! 256 (`Q4_K`, `Q5_K`, `Q6_K`) elements, each block a few bytes of scales
//! followed by packed integers. [`dequantize`] turns the bytes of a tensor
//! into f32 on the host, the reference for the in-program dequantization of
//! `crate::llm` and the path for checking a file by eye.

use half::{bf16, f16};

/// A GGML element type xlayer can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)] // GGML's own spelling: Q4_K, not Q4K
pub enum GgmlType {
    /// IEEE single precision.
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    BF16,
    /// 32-element blocks: an f16 scale `d`, 4-bit `q`; `x = (q - 8) d`.
    Q4_0,
    /// 32-element blocks: f16 `d` and `m`, 4-bit `q`; `x = q d + m`.
    Q4_1,
    /// 32-element blocks: an f16 scale `d`, signed 8-bit `q`; `x = q d`.
    Q8_0,
    /// 256-element super-blocks of eight 32-element sub-blocks with 6-bit
    /// scales and mins, 4-bit `q`.
    Q4_K,
    /// As [`GgmlType::Q4_K`] with a fifth bit per value.
    Q5_K,
    /// 256-element super-blocks of sixteen 16-element sub-blocks with 8-bit
    /// scales, 6-bit `q` centred on 32.
    Q6_K,
}

impl GgmlType {
    /// The type of GGML's numeric id, or `None` for an id xlayer does not
    /// read (unknown, or known but without a dequantizer here, such as
    /// `Q5_0`; [`GgmlType::name_of`] tells them apart).
    pub fn from_id(id: u32) -> Option<GgmlType> {
        Some(match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            8 => GgmlType::Q8_0,
            12 => GgmlType::Q4_K,
            13 => GgmlType::Q5_K,
            14 => GgmlType::Q6_K,
            30 => GgmlType::BF16,
            _ => return None,
        })
    }

    /// GGML's name for a type id (`"Q5_0"`), also for types xlayer does not
    /// read; `None` for ids GGML does not define.
    pub fn name_of(id: u32) -> Option<&'static str> {
        const NAMES: [&str; 31] = [
            "F32", "F16", "Q4_0", "Q4_1", "Q4_2", "Q4_3", "Q5_0", "Q5_1", "Q8_0", "Q8_1", "Q2_K",
            "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K", "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S",
            "IQ4_NL", "IQ3_S", "IQ2_S", "IQ4_XS", "I8", "I16", "I32", "I64", "F64", "IQ1_M",
            "BF16",
        ];
        NAMES.get(id as usize).copied()
    }

    /// GGML's numeric id.
    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q8_0 => 8,
            GgmlType::Q4_K => 12,
            GgmlType::Q5_K => 13,
            GgmlType::Q6_K => 14,
            GgmlType::BF16 => 30,
        }
    }

    /// GGML's name (`"Q4_1"`).
    pub fn name(self) -> &'static str {
        Self::name_of(self.id()).unwrap_or("?")
    }

    /// Elements per block (1 for the float types).
    pub fn block_elems(self) -> usize {
        match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => 1,
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0 => 32,
            GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K => 256,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 | GgmlType::BF16 => 2,
            GgmlType::Q4_0 => 18,
            GgmlType::Q4_1 => 20,
            GgmlType::Q8_0 => 34,
            GgmlType::Q4_K => 144,
            GgmlType::Q5_K => 176,
            GgmlType::Q6_K => 210,
        }
    }

    /// Bytes of `elems` elements, `None` if `elems` is not a whole number of
    /// blocks or the size overflows.
    pub fn bytes_for(self, elems: usize) -> Option<usize> {
        if !elems.is_multiple_of(self.block_elems()) {
            return None;
        }
        (elems / self.block_elems()).checked_mul(self.block_bytes())
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// The 6-bit scale and min of sub-block `j` (0..8) of a `Q4_K`/`Q5_K`
/// block's 12 packed scale bytes.
fn scale_min_k4(j: usize, q: &[u8]) -> (f32, f32) {
    if j < 4 {
        ((q[j] & 63) as f32, (q[j + 4] & 63) as f32)
    } else {
        let d = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        let m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
        (d as f32, m as f32)
    }
}

fn block(ty: GgmlType, b: &[u8], out: &mut [f32]) {
    match ty {
        GgmlType::F32 => out[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        GgmlType::F16 => out[0] = f16_at(b, 0),
        GgmlType::BF16 => out[0] = bf16::from_le_bytes([b[0], b[1]]).to_f32(),
        GgmlType::Q4_0 => {
            let d = f16_at(b, 0);
            for (j, &q) in b[2..18].iter().enumerate() {
                out[j] = ((q & 0xF) as f32 - 8.0) * d;
                out[j + 16] = ((q >> 4) as f32 - 8.0) * d;
            }
        }
        GgmlType::Q4_1 => {
            let (d, m) = (f16_at(b, 0), f16_at(b, 2));
            for (j, &q) in b[4..20].iter().enumerate() {
                out[j] = (q & 0xF) as f32 * d + m;
                out[j + 16] = (q >> 4) as f32 * d + m;
            }
        }
        GgmlType::Q8_0 => {
            let d = f16_at(b, 0);
            for (j, &q) in b[2..34].iter().enumerate() {
                out[j] = q as i8 as f32 * d;
            }
        }
        GgmlType::Q4_K | GgmlType::Q5_K => {
            let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
            let scales = &b[4..16];
            let (qh, qs) = if ty == GgmlType::Q5_K {
                (Some(&b[16..48]), &b[48..176])
            } else {
                (None, &b[16..144])
            };
            for chunk in 0..4 {
                let q = &qs[chunk * 32..chunk * 32 + 32];
                for half in 0..2 {
                    let (sc, m) = scale_min_k4(2 * chunk + half, scales);
                    let (d1, m1) = (d * sc, dmin * m);
                    let bit = 2 * chunk + half;
                    for l in 0..32 {
                        let mut v = if half == 0 { q[l] & 0xF } else { q[l] >> 4 };
                        if let Some(qh) = qh {
                            v += ((qh[l] >> bit) & 1) << 4;
                        }
                        out[chunk * 64 + half * 32 + l] = d1 * v as f32 - m1;
                    }
                }
            }
        }
        GgmlType::Q6_K => {
            let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
            let d = f16_at(b, 208);
            for n in 0..2 {
                let (ql, qh, sc) = (&ql[n * 64..], &qh[n * 32..], &sc[n * 8..]);
                let y = &mut out[n * 128..];
                for l in 0..32 {
                    let is = l / 16;
                    let q = |lo: u8, shift: u32| {
                        ((lo | (((qh[l] >> shift) & 3) << 4)) as i32 - 32) as f32
                    };
                    let s = |k: usize| sc[is + k] as i8 as f32 * d;
                    y[l] = s(0) * q(ql[l] & 0xF, 0);
                    y[l + 32] = s(2) * q(ql[l + 32] & 0xF, 2);
                    y[l + 64] = s(4) * q(ql[l] >> 4, 4);
                    y[l + 96] = s(6) * q(ql[l + 32] >> 4, 6);
                }
            }
        }
    }
}

/// Dequantizes `bytes`, the data of `elems` elements of type `ty`, to f32.
///
/// Returns `None` when `bytes` is not exactly the size of `elems` elements
/// (see [`GgmlType::bytes_for`]); [`crate::gguf::GgufFile::dequantize`]
/// guarantees it is.
pub fn dequantize(ty: GgmlType, bytes: &[u8], elems: usize) -> Option<Vec<f32>> {
    if ty.bytes_for(elems)? != bytes.len() {
        return None;
    }
    let (be, bb) = (ty.block_elems(), ty.block_bytes());
    let mut out = vec![0f32; elems];
    for (o, b) in out.chunks_exact_mut(be).zip(bytes.chunks_exact(bb)) {
        block(ty, b, o);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_sizes_and_ids() {
        for id in 0..40 {
            if let Some(t) = GgmlType::from_id(id) {
                assert_eq!(t.id(), id);
                assert_eq!(GgmlType::name_of(id), Some(t.name()));
            }
        }
        assert_eq!(GgmlType::from_id(6), None);
        assert_eq!(GgmlType::name_of(6), Some("Q5_0"));
        assert_eq!(GgmlType::name_of(99), None);
        assert_eq!(GgmlType::Q4_1.bytes_for(64), Some(40));
        assert_eq!(GgmlType::Q4_1.bytes_for(48), None);
        assert_eq!(GgmlType::Q8_0.bytes_for(usize::MAX / 32 * 32), None);
    }

    #[test]
    fn q4_1_block_by_hand() {
        // d = 0.5, m = -1: nibbles 0..15 map to -1 .. 6.5.
        let mut b = vec![];
        b.extend(f16::from_f32(0.5).to_le_bytes());
        b.extend(f16::from_f32(-1.0).to_le_bytes());
        b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let x = dequantize(GgmlType::Q4_1, &b, 32).unwrap();
        assert_eq!(x[0], -1.0);
        assert_eq!(x[15], 6.5);
        assert_eq!(x[16], 6.5);
        assert_eq!(x[31], -1.0);
        assert!(dequantize(GgmlType::Q4_1, &b[..19], 32).is_none());
    }
}
