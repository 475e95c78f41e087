//! The quantized matrix-vector product behind the `xlayer_q*_matvec`
//! kernels: `y[r] = sum_b d[r,b] * sum_j q[r,b,j] x[b,j] (+ m[r,b] *
//! sum_j x[b,j])` over 32-element blocks, reading each weight byte once.
//!
//! The parts are laid out as `crate::models::qweight` uploads them (the
//! file's bytes regrouped): `d`, `m` as f16 bits `[rows, nb]`, `qs` as
//! `[rows, nb, 16]` bytes for the 4-bit types (the low nibble of byte `j`
//! is element `j`, the high nibble element `16 + j`) or `[rows, nb, 32]`
//! signed bytes for `Q8_0`. `Q4_0`'s values are `q - 8`, which is
//! `Q4_1`'s formula with `m = -8 d`.
//!
//! Three implementations: AVX-512, AVX2 + FMA + F16C (the best the CPU has
//! is chosen at run time) and a portable one; each accumulates in f32 in
//! its own order, so they agree with an exact product to rounding, not bit
//! for bit.

/// The block types the kernel reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// 4-bit, `(q - 8) d`.
    Q4_0,
    /// 4-bit, `q d + m`.
    Q4_1,
    /// 8-bit signed, `q d`.
    Q8_0,
}

impl Kind {
    /// Bytes of `qs` per block.
    pub(crate) fn block_qs(self) -> usize {
        match self {
            Kind::Q8_0 => 32,
            Kind::Q4_0 | Kind::Q4_1 => 16,
        }
    }
}

/// The operands of one call, checked by the caller to be consistent:
/// `x.len() = 32 nb`, `d.len() = rows nb` (and `m`), `qs.len() = rows nb
/// block_qs`.
pub(crate) struct Parts<'a> {
    pub(crate) kind: Kind,
    pub(crate) x: &'a [f32],
    pub(crate) d: &'a [u16],
    pub(crate) m: Option<&'a [u16]>,
    pub(crate) qs: &'a [u8],
}

impl Parts<'_> {
    fn nb(&self) -> usize {
        self.x.len() / 32
    }

    /// The sum of each block of `x` (what `m` multiplies).
    pub(crate) fn block_sums(&self) -> Vec<f32> {
        self.x.chunks_exact(32).map(|c| c.iter().sum()).collect()
    }
}

/// Rows per chunk handed to a thread of the pool.
const CHUNK_ROWS: usize = 64;
/// Products with fewer weight bytes than this run on the calling thread
/// alone (waking a helper costs more than it saves).
const PARALLEL_BYTES: usize = 64 * 1024;

/// The whole product into `out` (`rows` values), split over the kernel
/// thread pool ([`super::pool`]) when it is large enough.
pub(crate) fn run(p: &Parts, out: &mut [f32]) {
    let xsum = p.block_sums();
    if p.qs.len() < PARALLEL_BYTES || out.len() <= CHUNK_ROWS {
        rows(p, &xsum, 0, out);
        return;
    }
    let chunks: Vec<std::sync::Mutex<&mut [f32]>> = out
        .chunks_mut(CHUNK_ROWS)
        .map(std::sync::Mutex::new)
        .collect();
    super::pool::for_each_chunk(chunks.len(), &|c| {
        let mut y = chunks[c].lock().unwrap_or_else(|e| e.into_inner());
        rows(p, &xsum, c * CHUNK_ROWS, &mut y);
    });
}

fn f16_to_f32(bits: u16) -> f32 {
    half::f16::from_bits(bits).to_f32()
}

/// The implementations, fastest last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Isa {
    /// Plain Rust.
    Portable,
    /// AVX2, FMA and F16C, 256-bit.
    Avx2,
    /// AVX-512F (with AVX2, FMA, F16C), 512-bit.
    Avx512,
}

/// What this CPU can run.
pub(crate) fn cpu_isa() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx2") && has!("fma") && has!("f16c") {
            return if has!("avx512f") {
                Isa::Avx512
            } else {
                Isa::Avx2
            };
        }
    }
    Isa::Portable
}

/// The implementation calls use: the best the CPU has, or a lesser one
/// named by `XLAYER_CPU_KERNEL_ISA` (`portable`, `avx2`; for comparisons).
fn chosen_isa() -> Isa {
    static CHOSEN: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
    *CHOSEN.get_or_init(|| {
        let best = cpu_isa();
        match std::env::var(super::KERNEL_ISA_VAR).as_deref() {
            Ok("portable") => Isa::Portable,
            Ok("avx2") => best.min(Isa::Avx2),
            _ => best,
        }
    })
}

/// Rows `row0 .. row0 + out.len()` of the product into `out`, with the
/// implementation [`chosen_isa`] names. `xsum` is [`Parts::block_sums`].
pub(crate) fn rows(p: &Parts, xsum: &[f32], row0: usize, out: &mut [f32]) {
    rows_with(chosen_isa(), p, xsum, row0, out)
}

/// [`rows`] with implementation `isa` (at most [`cpu_isa`]; a better one
/// than the CPU has runs the portable code).
pub(crate) fn rows_with(isa: Isa, p: &Parts, xsum: &[f32], row0: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if isa > Isa::Portable && isa <= cpu_isa() {
        // SAFETY: the CPU has the features of `isa` (checked just above);
        // the caller guarantees the slice lengths both rely on (see
        // `Parts`), and `row0 + out.len()` is at most the row count.
        unsafe {
            if isa == Isa::Avx512 {
                rows_avx512(p, xsum, row0, out)
            } else {
                rows_avx2(p, xsum, row0, out)
            }
        };
        return;
    }
    rows_portable(p, xsum, row0, out)
}

/// The portable implementation of [`rows`].
pub(crate) fn rows_portable(p: &Parts, xsum: &[f32], row0: usize, out: &mut [f32]) {
    let nb = p.nb();
    let bq = p.kind.block_qs();
    for (i, y) in out.iter_mut().enumerate() {
        let r = row0 + i;
        let mut acc = 0f32;
        for b in 0..nb {
            let xb = &p.x[b * 32..b * 32 + 32];
            let q = &p.qs[(r * nb + b) * bq..(r * nb + b + 1) * bq];
            let d = f16_to_f32(p.d[r * nb + b]);
            acc += match p.kind {
                Kind::Q8_0 => {
                    let t: f32 = q.iter().zip(xb).map(|(&q, &x)| q as i8 as f32 * x).sum();
                    d * t
                }
                Kind::Q4_0 | Kind::Q4_1 => {
                    let (lo, hi) = xb.split_at(16);
                    let t: f32 = q
                        .iter()
                        .zip(lo.iter().zip(hi))
                        .map(|(&q, (&xl, &xh))| (q & 15) as f32 * xl + (q >> 4) as f32 * xh)
                        .sum();
                    let m = match p.m {
                        Some(m) => f16_to_f32(m[r * nb + b]),
                        None => -8.0 * d,
                    };
                    d * t + m * xsum[b]
                }
            };
        }
        *y = acc;
    }
}

/// One f16 (its bits) as f32, with F16C.
///
/// # Safety
/// The CPU must have F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "f16c")]
#[inline]
unsafe fn h2f(bits: u16) -> f32 {
    use std::arch::x86_64::*;
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

/// The AVX2 implementation of [`rows`].
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C, and the slices of `p` must have
/// the lengths [`Parts`] states, with `row0 + out.len()` rows at most.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rows_avx2(p: &Parts, xsum: &[f32], row0: usize, out: &mut [f32]) {
    use std::arch::x86_64::*;
    let nb = p.nb();
    let bq = p.kind.block_qs();
    let rows = out.len();
    assert!(p.d.len() >= (row0 + rows) * nb && p.qs.len() >= (row0 + rows) * nb * bq);
    assert!(xsum.len() >= nb && p.m.is_none_or(|m| m.len() >= (row0 + rows) * nb));
    let mask = _mm_set1_epi8(0x0F);
    let xp = p.x.as_ptr();
    for (i, y) in out.iter_mut().enumerate() {
        let r = row0 + i;
        let qrow = p.qs.as_ptr().add(r * nb * bq);
        let drow = &p.d[r * nb..(r + 1) * nb];
        let mut acc0 = _mm256_setzero_ps();
        let mut acc1 = _mm256_setzero_ps();
        let mut tail = 0f32;
        for b in 0..nb {
            // SAFETY (all loads below): block `b` of row `r` is within `qs`
            // (asserted above), and block `b` of `x` within `x`
            // (`x.len() = 32 nb`).
            let xb = xp.add(b * 32);
            let (f0, f1, f2, f3) = if p.kind == Kind::Q8_0 {
                let q0 = _mm_loadu_si128(qrow.add(b * 32).cast());
                let q1 = _mm_loadu_si128(qrow.add(b * 32 + 16).cast());
                (
                    _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q0)),
                    _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128::<8>(q0))),
                    _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q1)),
                    _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128::<8>(q1))),
                )
            } else {
                let q = _mm_loadu_si128(qrow.add(b * 16).cast());
                let lo = _mm_and_si128(q, mask);
                let hi = _mm_and_si128(_mm_srli_epi16::<4>(q), mask);
                (
                    _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo)),
                    _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128::<8>(lo))),
                    _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi)),
                    _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128::<8>(hi))),
                )
            };
            let mut t = _mm256_mul_ps(f0, _mm256_loadu_ps(xb));
            t = _mm256_fmadd_ps(f1, _mm256_loadu_ps(xb.add(8)), t);
            t = _mm256_fmadd_ps(f2, _mm256_loadu_ps(xb.add(16)), t);
            t = _mm256_fmadd_ps(f3, _mm256_loadu_ps(xb.add(24)), t);
            let d = h2f(drow[b]);
            if b % 2 == 0 {
                acc0 = _mm256_fmadd_ps(_mm256_set1_ps(d), t, acc0);
            } else {
                acc1 = _mm256_fmadd_ps(_mm256_set1_ps(d), t, acc1);
            }
            match (p.kind, p.m) {
                (Kind::Q4_1, Some(m)) => tail += h2f(m[r * nb + b]) * xsum[b],
                (Kind::Q4_0, _) => tail -= 8.0 * d * xsum[b],
                _ => {}
            }
        }
        let acc = _mm256_add_ps(acc0, acc1);
        let s4 = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps::<1>(acc));
        let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
        let s1 = _mm_add_ss(s2, _mm_shuffle_ps::<1>(s2, s2));
        *y = _mm_cvtss_f32(s1) + tail;
    }
}

/// The AVX-512 implementation of [`rows`]: as [`rows_avx2`] with 16-lane
/// vectors (a 4-bit block is two: its low and its high nibbles).
///
/// # Safety
/// As [`rows_avx2`], and the CPU must have AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn rows_avx512(p: &Parts, xsum: &[f32], row0: usize, out: &mut [f32]) {
    use std::arch::x86_64::*;
    let nb = p.nb();
    let bq = p.kind.block_qs();
    let rows = out.len();
    assert!(p.d.len() >= (row0 + rows) * nb && p.qs.len() >= (row0 + rows) * nb * bq);
    assert!(xsum.len() >= nb && p.m.is_none_or(|m| m.len() >= (row0 + rows) * nb));
    let mask = _mm_set1_epi8(0x0F);
    let xp = p.x.as_ptr();
    for (i, y) in out.iter_mut().enumerate() {
        let r = row0 + i;
        let qrow = p.qs.as_ptr().add(r * nb * bq);
        let drow = &p.d[r * nb..(r + 1) * nb];
        let mut acc0 = _mm512_setzero_ps();
        let mut acc1 = _mm512_setzero_ps();
        let mut tail = 0f32;
        for b in 0..nb {
            // SAFETY (all loads below): as in `rows_avx2`.
            let xb = xp.add(b * 32);
            let (f0, f1) = if p.kind == Kind::Q8_0 {
                let q0 = _mm_loadu_si128(qrow.add(b * 32).cast());
                let q1 = _mm_loadu_si128(qrow.add(b * 32 + 16).cast());
                (
                    _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q0)),
                    _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q1)),
                )
            } else {
                let q = _mm_loadu_si128(qrow.add(b * 16).cast());
                let lo = _mm_and_si128(q, mask);
                let hi = _mm_and_si128(_mm_srli_epi16::<4>(q), mask);
                (
                    _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(lo)),
                    _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(hi)),
                )
            };
            let t = _mm512_fmadd_ps(
                f1,
                _mm512_loadu_ps(xb.add(16)),
                _mm512_mul_ps(f0, _mm512_loadu_ps(xb)),
            );
            let d = h2f(drow[b]);
            if b % 2 == 0 {
                acc0 = _mm512_fmadd_ps(_mm512_set1_ps(d), t, acc0);
            } else {
                acc1 = _mm512_fmadd_ps(_mm512_set1_ps(d), t, acc1);
            }
            match (p.kind, p.m) {
                (Kind::Q4_1, Some(m)) => tail += h2f(m[r * nb + b]) * xsum[b],
                (Kind::Q4_0, _) => tail -= 8.0 * d * xsum[b],
                _ => {}
            }
        }
        *y = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1)) + tail;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Exact products of small integers: every implementation gives them
    /// bit for bit (all partial sums are integers below 2^24).
    #[test]
    fn integer_data_is_exact_in_every_path() {
        let (rows, nb) = (3, 2);
        let x: Vec<f32> = (0..64).map(|i| (i % 7) as f32 - 3.0).collect();
        let one = half::f16::from_f32(1.0).to_bits();
        let d = vec![one; rows * nb];
        let m = vec![half::f16::from_f32(-2.0).to_bits(); rows * nb];
        let q4: Vec<u8> = (0..rows * nb * 16).map(|i| (i * 37 % 256) as u8).collect();
        let q8: Vec<u8> = (0..rows * nb * 32).map(|i| (i * 53 % 256) as u8).collect();
        for (kind, qs, m) in [
            (Kind::Q4_0, &q4, None),
            (Kind::Q4_1, &q4, Some(&m[..])),
            (Kind::Q8_0, &q8, None),
        ] {
            let p = Parts {
                kind,
                x: &x,
                d: &d,
                m,
                qs,
            };
            let xsum = p.block_sums();
            let mut want = vec![0f32; rows];
            for (r, w) in want.iter_mut().enumerate() {
                for b in 0..nb {
                    for j in 0..32 {
                        let v = match kind {
                            Kind::Q8_0 => qs[(r * nb + b) * 32 + j] as i8 as f32,
                            _ => {
                                let byte = qs[(r * nb + b) * 16 + j % 16];
                                let q = if j < 16 { byte & 15 } else { byte >> 4 } as f32;
                                if kind == Kind::Q4_0 {
                                    q - 8.0
                                } else {
                                    q - 2.0
                                }
                            }
                        };
                        *w += v * x[b * 32 + j];
                    }
                }
            }
            let mut got = vec![0f32; rows];
            rows_portable(&p, &xsum, 0, &mut got);
            assert_eq!(got, want, "{kind:?} portable");
            for isa in [Isa::Portable, Isa::Avx2, Isa::Avx512] {
                let mut got = vec![0f32; rows];
                rows_with(isa, &p, &xsum, 0, &mut got);
                assert_eq!(got, want, "{kind:?} {isa:?} (the CPU has {:?})", cpu_isa());
                // A row range writes only its rows.
                let mut part = vec![0f32; 2];
                rows_with(isa, &p, &xsum, 1, &mut part);
                assert_eq!(part, want[1..], "{kind:?} {isa:?} rows 1..3");
            }
        }
    }
}
