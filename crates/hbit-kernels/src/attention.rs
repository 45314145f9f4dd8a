//! The two vector products of attention over a cached history: the scores `scale · q·k_p` of a
//! run of positions, and the weighted sum `Σ_p w_p · v_p` of their values; and between them the
//! softmax's numerators `e^(s_p − max s)` with their total. Keys and values come as f32 rows or,
//! straight from an f16 KV cache, as f16 rows (widened in registers, so a decode step never
//! copies the history to f32, and streamed with requests for the lines ahead).
//!
//! Each is defined in one summation order, which every path follows, so every path gives
//! bit-identical results:
//! * a score sums `q[i]·k[i]` (one fused multiply-add each, `f32::mul_add`) into eight lanes,
//!   lane `i mod 8` for the first `8·⌊hd/8⌋` columns, reduces the lanes as
//!   `((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7))`, adds the remaining columns in order, then
//!   multiplies by `scale`;
//! * the numerators' total sums them in the same eight lanes, the same reduction and tail
//!   ([`softmax_exponentials`], with the GLU's `exp`, `crate::act::exp_f32`);
//! * the weighted sum updates `out[i] = w_p·v_p[i] + out[i]` (fused) position by position, in
//!   order.
//!
//! Integer KV caches are written and widened by [`crate::kv_codec`].

use half::f16;

use crate::act::exp_f32;
use crate::cpu::KernelPath;
use crate::error::KernelError;

/// Keys or values of consecutive positions, `[positions, hd]` row-major.
#[derive(Debug, Clone, Copy)]
pub enum HistoryRows<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
}

impl<'a> HistoryRows<'a> {
    /// The first `values` values (whole positions, for a caller cutting a run short); panics
    /// past the end, like slicing.
    pub fn first(self, values: usize) -> HistoryRows<'a> {
        match self {
            HistoryRows::F32(v) => HistoryRows::F32(&v[..values]),
            HistoryRows::F16(v) => HistoryRows::F16(&v[..values]),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            HistoryRows::F32(v) => v.len(),
            HistoryRows::F16(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn value(&self, i: usize) -> f32 {
        match self {
            HistoryRows::F32(v) => v[i],
            HistoryRows::F16(v) => v[i].to_f32(),
        }
    }
}

/// `scores[p] = scale · q·k_p` for every position `p` of `keys` `[scores.len(), q.len()]`.
pub fn scores(
    path: KernelPath,
    q: &[f32],
    keys: HistoryRows,
    scale: f32,
    scores: &mut [f32],
) -> Result<(), KernelError> {
    check(q.len(), keys.len(), scores.len(), "keys [positions, hd]")?;
    #[cfg(target_arch = "x86_64")]
    if path != KernelPath::Scalar && simd::available(&keys) {
        path.check_supported()?;
        // SAFETY: a non-scalar path is supported (checked), so AVX2 and FMA are present (`cpu`),
        // and `available` checked F16C for f16 rows; lengths were checked above.
        unsafe { simd::scores(q, keys, scale, scores) };
        return Ok(());
    }
    let _ = path;
    scores_reference(q, keys, scale, scores);
    Ok(())
}

/// `out[i] += Σ_p weights[p] · v_p[i]` over the positions of `values` `[weights.len(), out.len()]`.
pub fn weighted_sum(
    path: KernelPath,
    weights: &[f32],
    values: HistoryRows,
    out: &mut [f32],
) -> Result<(), KernelError> {
    check(
        out.len(),
        values.len(),
        weights.len(),
        "values [positions, hd]",
    )?;
    #[cfg(target_arch = "x86_64")]
    if path != KernelPath::Scalar && simd::available(&values) {
        path.check_supported()?;
        // SAFETY: as in `scores`; the AVX-512 path implies AVX-512 F.
        unsafe {
            if path == KernelPath::Avx512 {
                simd::weighted_sum_avx512(weights, values, out)
            } else {
                simd::weighted_sum(weights, values, out)
            }
        };
        return Ok(());
    }
    let _ = path;
    weighted_sum_reference(weights, values, out);
    Ok(())
}

fn check(
    hd: usize,
    rows_len: usize,
    positions: usize,
    what: &'static str,
) -> Result<(), KernelError> {
    if rows_len != positions * hd {
        return Err(KernelError::LengthMismatch {
            what,
            expected: positions * hd,
            found: rows_len,
        });
    }
    Ok(())
}

/// The defined order of [`scores`], one value at a time.
pub fn scores_reference(q: &[f32], keys: HistoryRows, scale: f32, scores: &mut [f32]) {
    let hd = q.len();
    let body = hd / 8 * 8;
    for (p, score) in scores.iter_mut().enumerate() {
        let mut lanes = [0.0f32; 8];
        for (i, &qi) in q[..body].iter().enumerate() {
            lanes[i % 8] = qi.mul_add(keys.value(p * hd + i), lanes[i % 8]);
        }
        let mut sum = ((lanes[0] + lanes[4]) + (lanes[2] + lanes[6]))
            + ((lanes[1] + lanes[5]) + (lanes[3] + lanes[7]));
        for (i, &qi) in q.iter().enumerate().skip(body) {
            sum = qi.mul_add(keys.value(p * hd + i), sum);
        }
        *score = sum * scale;
    }
}

/// A softmax's numerators: `x[i] = e^(x[i] − max x)` with [`exp_f32`] (the maximum ignores NaN,
/// as `f32::max` does), returning their total in the defined order: eight lanes, lane `i mod 8`
/// for the first `8·⌊n/8⌋` values in order, reduced as `((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7))`,
/// then the remaining values in order. The division is left to the caller, who folds it into
/// the weighted sum. Every path gives the same bits.
pub fn softmax_exponentials(path: KernelPath, x: &mut [f32]) -> Result<f32, KernelError> {
    #[cfg(target_arch = "x86_64")]
    if path != KernelPath::Scalar {
        path.check_supported()?;
        // SAFETY: a non-scalar path is supported (checked), so AVX2 is present.
        return Ok(unsafe { simd::softmax_exponentials(x) });
    }
    let _ = path;
    Ok(softmax_exponentials_reference(x))
}

/// The defined order of [`softmax_exponentials`], one value at a time.
pub fn softmax_exponentials_reference(x: &mut [f32]) -> f32 {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let body = x.len() / 8 * 8;
    let mut lanes = [0.0f32; 8];
    for (i, v) in x[..body].iter_mut().enumerate() {
        *v = exp_f32(*v - max);
        lanes[i % 8] += *v;
    }
    let mut total = ((lanes[0] + lanes[4]) + (lanes[2] + lanes[6]))
        + ((lanes[1] + lanes[5]) + (lanes[3] + lanes[7]));
    for v in &mut x[body..] {
        *v = exp_f32(*v - max);
        total += *v;
    }
    total
}

/// The defined order of [`weighted_sum`], one value at a time.
pub fn weighted_sum_reference(weights: &[f32], values: HistoryRows, out: &mut [f32]) {
    let hd = out.len();
    for (p, &w) in weights.iter().enumerate() {
        for (i, o) in out.iter_mut().enumerate() {
            *o = w.mul_add(values.value(p * hd + i), *o);
        }
    }
}

/// The scores' eight-lane reduction, for the in-place 4-bit kernels' identical sums.
#[cfg(target_arch = "x86_64")]
pub(crate) use simd::reduce as reduce_eight_lanes;

#[cfg(target_arch = "x86_64")]
mod simd {
    use super::HistoryRows;
    use half::f16;
    use std::arch::x86_64::*;

    /// AVX2 is guaranteed by the non-scalar paths; f16 rows also need F16C.
    pub fn available(rows: &HistoryRows) -> bool {
        match rows {
            HistoryRows::F32(_) => true,
            HistoryRows::F16(_) => std::arch::is_x86_feature_detected!("f16c"),
        }
    }

    /// Eight values of a row as f32 lanes.
    trait Load {
        /// Whether rows of this type stream from memory: f16 rows are a KV cache read in place;
        /// f32 rows are (but for an f32 cache, a reference setting) a chunk just widened by the
        /// caller and still in L1, where asking for lines ahead only costs issue slots (≈ 12%
        /// of a 1922-token prefill's score samples).
        const STREAMED: bool;
        /// # Safety
        /// `p` points at 8 readable values; the CPU has AVX2 (and F16C for f16).
        unsafe fn load8(p: *const Self) -> __m256;
        fn widen(self) -> f32;
    }

    impl Load for f32 {
        const STREAMED: bool = false;
        #[inline(always)]
        unsafe fn load8(p: *const f32) -> __m256 {
            // SAFETY: per the trait contract.
            unsafe { _mm256_loadu_ps(p) }
        }
        fn widen(self) -> f32 {
            self
        }
    }

    impl Load for f16 {
        const STREAMED: bool = true;
        #[inline(always)]
        unsafe fn load8(p: *const f16) -> __m256 {
            // SAFETY: per the trait contract (16 readable bytes, F16C present).
            unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)) }
        }
        fn widen(self) -> f32 {
            self.to_f32()
        }
    }

    /// # Safety
    /// AVX2 and FMA present, and F16C for f16 rows; `keys.len() == scores.len() · q.len()`.
    pub unsafe fn scores(q: &[f32], keys: HistoryRows, scale: f32, scores: &mut [f32]) {
        // SAFETY: forwarded contract.
        unsafe {
            match keys {
                HistoryRows::F32(k) => scores_typed(q, k, scale, scores),
                HistoryRows::F16(k) => scores_typed_f16(q, k, scale, scores),
            }
        }
    }

    /// # Safety
    /// As [`scores`], with `values.len() == weights.len() · out.len()`.
    pub unsafe fn weighted_sum(weights: &[f32], values: HistoryRows, out: &mut [f32]) {
        // SAFETY: forwarded contract.
        unsafe {
            match values {
                HistoryRows::F32(v) => weighted_sum_typed(weights, v, out),
                HistoryRows::F16(v) => weighted_sum_typed_f16(weights, v, out),
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn scores_typed(q: &[f32], k: &[f32], scale: f32, out: &mut [f32]) {
        // SAFETY: AVX2 enabled; lengths per the caller's contract.
        unsafe { scores_body(q, k, scale, out) }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn scores_typed_f16(q: &[f32], k: &[f16], scale: f32, out: &mut [f32]) {
        // SAFETY: AVX2 and F16C enabled; lengths per the caller's contract.
        unsafe { scores_body(q, k, scale, out) }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn weighted_sum_typed(w: &[f32], v: &[f32], out: &mut [f32]) {
        // SAFETY: AVX2 enabled; lengths per the caller's contract.
        unsafe { weighted_sum_body(w, v, out) }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn weighted_sum_typed_f16(w: &[f32], v: &[f16], out: &mut [f32]) {
        // SAFETY: AVX2 and F16C enabled; lengths per the caller's contract.
        unsafe { weighted_sum_body(w, v, out) }
    }

    /// [`super::softmax_exponentials_reference`], eight values at a time.
    ///
    /// # Safety
    /// AVX2 present.
    #[target_feature(enable = "avx2")]
    pub unsafe fn softmax_exponentials(x: &mut [f32]) -> f32 {
        let body = x.len() / 8 * 8;
        let p = x.as_mut_ptr();
        // SAFETY (both loops): i + 8 <= body <= x.len(); AVX2 is enabled here.
        let max = unsafe {
            // `vmaxps` returns its second operand when the first is NaN: a NaN score is passed
            // over, as `f32::max` passes it over in the reference.
            let mut m = _mm256_set1_ps(f32::NEG_INFINITY);
            for i in (0..body).step_by(8) {
                m = _mm256_max_ps(_mm256_loadu_ps(p.add(i)), m);
            }
            let mut lanes = [0.0f32; 8];
            _mm256_storeu_ps(lanes.as_mut_ptr(), m);
            lanes
                .iter()
                .chain(&x[body..])
                .fold(f32::NEG_INFINITY, |m, &v| m.max(v))
        };
        let mut total = unsafe {
            let shift = _mm256_set1_ps(max);
            let mut lanes = _mm256_setzero_ps();
            for i in (0..body).step_by(8) {
                let e = crate::act::avx2::exp8(_mm256_sub_ps(_mm256_loadu_ps(p.add(i)), shift));
                _mm256_storeu_ps(p.add(i), e);
                lanes = _mm256_add_ps(lanes, e);
            }
            reduce(lanes)
        };
        for v in &mut x[body..] {
            *v = super::exp_f32(*v - max);
            total += *v;
        }
        total
    }

    /// `((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7))`, the reference's lane order (also the in-place
    /// 4-bit scores' of `attention_int4`).
    ///
    /// # Safety
    /// Only for callers with AVX2 enabled.
    #[inline(always)]
    pub(crate) unsafe fn reduce(s: __m256) -> f32 {
        // SAFETY: the caller enables AVX2.
        unsafe {
            let quad = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
            let pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
            _mm_cvtss_f32(_mm_add_ss(pair, _mm_shuffle_ps(pair, pair, 1)))
        }
    }

    /// Positions scored together: four independent lane sums in flight instead of one chain of
    /// `hd / 8` dependent adds per position.
    const SCORE_POSITIONS: usize = 4;

    /// Bytes ahead of the current position that a kernel asks the cache for, within its own
    /// rows. A decode step's history (e.g. 16 sequences × 24 layers × 144 positions of f16 keys
    /// and values, 340 MB at ≈700M) streams from memory, a few KiB per head, too short for
    /// the hardware prefetcher to ramp up on each.
    const AHEAD_BYTES: usize = 2048;

    /// Asks for the cache lines of `rows[from..to)` (clamped to `rows`), `prefetcht0`, when
    /// such rows stream from memory ([`Load::STREAMED`]).
    ///
    /// # Safety
    /// Only for callers with SSE (every x86-64 CPU); a prefetch never faults, and the range is
    /// clamped to `rows` so no address past it is formed.
    #[inline(always)]
    unsafe fn prefetch<T: Load>(rows: &[T], from: usize, to: usize) {
        if !T::STREAMED {
            return;
        }
        let size = std::mem::size_of::<T>();
        let to = to.min(rows.len());
        let mut i = from;
        while i < to {
            // SAFETY: i < rows.len(), so the pointer is within `rows`.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(rows.as_ptr().add(i) as *const i8) };
            i += 64 / size;
        }
    }

    #[inline(always)]
    unsafe fn scores_body<T: Load + Copy>(q: &[f32], k: &[T], scale: f32, out: &mut [f32]) {
        let hd = q.len();
        let body = hd / 8 * 8;
        let ahead = AHEAD_BYTES / std::mem::size_of::<T>();
        // One position's score in the defined order: lanes of fused `q[i]·k[i]` sums, reduced,
        // then the tail columns, then the scale.
        let finish = |lanes: __m256, row: &[T]| -> f32 {
            // SAFETY: the enclosing function enables AVX2.
            let mut sum = unsafe { reduce(lanes) };
            for i in body..hd {
                sum = q[i].mul_add(row[i].widen(), sum);
            }
            sum * scale
        };
        let mut p = 0;
        while p + SCORE_POSITIONS <= out.len() {
            let rows = &k[p * hd..(p + SCORE_POSITIONS) * hd];
            // SAFETY: every load reads 8 values at column i < body <= hd of `q` or of one of
            // the four rows; `prefetch` clamps to `k`; the enclosing function enables AVX2 (and
            // F16C for f16).
            let lanes = unsafe {
                prefetch(k, p * hd + ahead, (p + SCORE_POSITIONS) * hd + ahead);
                let mut lanes = [_mm256_setzero_ps(); SCORE_POSITIONS];
                for i in (0..body).step_by(8) {
                    let qi = _mm256_loadu_ps(q.as_ptr().add(i));
                    for (j, l) in lanes.iter_mut().enumerate() {
                        let kj = T::load8(rows.as_ptr().add(j * hd + i));
                        *l = _mm256_fmadd_ps(qi, kj, *l);
                    }
                }
                lanes
            };
            for (j, l) in lanes.into_iter().enumerate() {
                out[p + j] = finish(l, &rows[j * hd..(j + 1) * hd]);
            }
            p += SCORE_POSITIONS;
        }
        for (p, score) in out.iter_mut().enumerate().skip(p) {
            let row = &k[p * hd..(p + 1) * hd];
            // SAFETY: as above, one row.
            let lanes = unsafe {
                let mut lanes = _mm256_setzero_ps();
                for i in (0..body).step_by(8) {
                    lanes = _mm256_fmadd_ps(
                        _mm256_loadu_ps(q.as_ptr().add(i)),
                        T::load8(row.as_ptr().add(i)),
                        lanes,
                    );
                }
                lanes
            };
            *score = finish(lanes, row);
        }
    }

    /// Columns are taken 32 at a time (four registers of running sums) across every position,
    /// so `out` is loaded and stored once per block, not once per position.
    #[inline(always)]
    unsafe fn weighted_sum_body<T: Load + Copy>(w: &[f32], v: &[T], out: &mut [f32]) {
        let hd = out.len();
        let ahead = AHEAD_BYTES / std::mem::size_of::<T>();
        let mut c0 = 0;
        // SAFETY (all blocks below): every load or store touches 8 values at columns
        // c0..c0 + width <= hd of `out` or of a row of `v` (`w.len()` rows of `hd`); `prefetch`
        // clamps to `v`; the enclosing function enables the needed features.
        while c0 + 32 <= hd {
            unsafe {
                let o = out.as_mut_ptr().add(c0);
                let mut acc = [
                    _mm256_loadu_ps(o),
                    _mm256_loadu_ps(o.add(8)),
                    _mm256_loadu_ps(o.add(16)),
                    _mm256_loadu_ps(o.add(24)),
                ];
                for (p, &wp) in w.iter().enumerate() {
                    // The first pass streams the rows from memory; later ones find them cached.
                    if c0 == 0 {
                        prefetch(v, p * hd + ahead, (p + 1) * hd + ahead);
                    }
                    let weight = _mm256_set1_ps(wp);
                    let row = v.as_ptr().add(p * hd + c0);
                    for (j, a) in acc.iter_mut().enumerate() {
                        *a = _mm256_fmadd_ps(weight, T::load8(row.add(8 * j)), *a);
                    }
                }
                for (j, a) in acc.iter().enumerate() {
                    _mm256_storeu_ps(o.add(8 * j), *a);
                }
            }
            c0 += 32;
        }
        // SAFETY: forwarded contract, columns c0.. of every row.
        unsafe { weighted_sum_tail(w, v, out, c0) }
    }

    /// Columns `c0..` of [`weighted_sum_body`]: 8 at a time, then one by one.
    ///
    /// # Safety
    /// As [`weighted_sum_body`].
    #[inline(always)]
    unsafe fn weighted_sum_tail<T: Load + Copy>(w: &[f32], v: &[T], out: &mut [f32], c0: usize) {
        let hd = out.len();
        let mut c0 = c0;
        while c0 + 8 <= hd {
            // SAFETY: 8 values at columns c0..c0 + 8 <= hd of `out` and of each row of `v`;
            // the enclosing function enables the needed features.
            unsafe {
                let o = out.as_mut_ptr().add(c0);
                let mut acc = _mm256_loadu_ps(o);
                for (p, &wp) in w.iter().enumerate() {
                    let row = v.as_ptr().add(p * hd + c0);
                    acc = _mm256_fmadd_ps(_mm256_set1_ps(wp), T::load8(row), acc);
                }
                _mm256_storeu_ps(o, acc);
            }
            c0 += 8;
        }
        for i in c0..hd {
            for (p, &wp) in w.iter().enumerate() {
                out[i] = wp.mul_add(v[p * hd + i].widen(), out[i]);
            }
        }
    }

    /// Sixteen values of a row as f32 lanes.
    trait Load16: Load {
        /// # Safety
        /// `p` points at 16 readable values; the CPU has AVX-512 F.
        unsafe fn load16(p: *const Self) -> __m512;
    }

    impl Load16 for f32 {
        #[inline(always)]
        unsafe fn load16(p: *const f32) -> __m512 {
            // SAFETY: per the trait contract.
            unsafe { _mm512_loadu_ps(p) }
        }
    }

    impl Load16 for f16 {
        #[inline(always)]
        unsafe fn load16(p: *const f16) -> __m512 {
            // SAFETY: per the trait contract (32 readable bytes).
            unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i)) }
        }
    }

    /// # Safety
    /// AVX-512 F and FMA present; `values.len() == weights.len() · out.len()`.
    pub unsafe fn weighted_sum_avx512(weights: &[f32], values: HistoryRows, out: &mut [f32]) {
        // SAFETY: forwarded contract.
        unsafe {
            match values {
                HistoryRows::F32(v) => weighted_sum_avx512_typed(weights, v, out),
                HistoryRows::F16(v) => weighted_sum_avx512_typed(weights, v, out),
            }
        }
    }

    /// The weighted sum with 16 lanes: each column's running sum is its own lane, so the
    /// width changes nothing in the defined order. Up to 128 columns (eight registers) per pass
    /// over the positions, so a head of 64, 96 or 128 values reads its rows once.
    ///
    /// # Safety
    /// AVX-512 F and FMA present; `v.len() == w.len() · out.len()`.
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    unsafe fn weighted_sum_avx512_typed<T: Load16 + Copy>(w: &[f32], v: &[T], out: &mut [f32]) {
        let hd = out.len();
        let mut c0 = 0;
        while c0 + 16 <= hd {
            let registers = ((hd - c0) / 16).min(8);
            // SAFETY: `registers · 16` columns from c0 lie within `out` and every row; the
            // features are enabled here.
            unsafe {
                match registers {
                    8 => columns16::<T, 8>(w, v, out, c0),
                    7 => columns16::<T, 7>(w, v, out, c0),
                    6 => columns16::<T, 6>(w, v, out, c0),
                    5 => columns16::<T, 5>(w, v, out, c0),
                    4 => columns16::<T, 4>(w, v, out, c0),
                    3 => columns16::<T, 3>(w, v, out, c0),
                    2 => columns16::<T, 2>(w, v, out, c0),
                    _ => columns16::<T, 1>(w, v, out, c0),
                }
            }
            c0 += 16 * registers;
        }
        // SAFETY: AVX2 and F16C are enabled here; columns c0.. of every row exist.
        unsafe { weighted_sum_tail(w, v, out, c0) }
    }

    /// Columns `c0..c0 + 16·R` of the weighted sum in `R` registers, over every position.
    ///
    /// # Safety
    /// AVX-512 F and FMA present; those columns exist in `out` and in each of the `w.len()` rows of `v`.
    #[inline(always)]
    unsafe fn columns16<T: Load16 + Copy, const R: usize>(
        w: &[f32],
        v: &[T],
        out: &mut [f32],
        c0: usize,
    ) {
        let hd = out.len();
        let ahead = AHEAD_BYTES / std::mem::size_of::<T>();
        // SAFETY: loads and stores touch columns c0..c0 + 16·R of `out` and of the rows, within
        // bounds by the contract; `prefetch` clamps to `v`.
        unsafe {
            let o = out.as_mut_ptr().add(c0);
            let mut acc: [__m512; R] = std::array::from_fn(|j| _mm512_loadu_ps(o.add(16 * j)));
            for (p, &wp) in w.iter().enumerate() {
                prefetch(v, p * hd + c0 + ahead, p * hd + c0 + 16 * R + ahead);
                let weight = _mm512_set1_ps(wp);
                let row = v.as_ptr().add(p * hd + c0);
                for (j, a) in acc.iter_mut().enumerate() {
                    *a = _mm512_fmadd_ps(weight, T::load16(row.add(16 * j)), *a);
                }
            }
            for (j, a) in acc.iter().enumerate() {
                _mm512_storeu_ps(o.add(16 * j), *a);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0
            })
            .collect()
    }

    #[test]
    fn known_answers() {
        // q = [1, 2], keys [[3, 4], [-1, 0.5]]: q·k = [11, 0], times 0.5.
        let q = [1.0, 2.0];
        let keys = [3.0, 4.0, -1.0, 0.5];
        let keys16: Vec<f16> = keys.iter().map(|&v| f16::from_f32(v)).collect();
        for path in KernelPath::supported() {
            for rows in [HistoryRows::F32(&keys), HistoryRows::F16(&keys16)] {
                let mut s = [0.0; 2];
                scores(path, &q, rows, 0.5, &mut s).unwrap();
                assert_eq!(s, [5.5, 0.0], "{path}");
                // out = [1, 1] + 0.25·[3, 4] + 2·[-1, 0.5] = [-0.25, 3].
                let mut out = [1.0, 1.0];
                weighted_sum(path, &[0.25, 2.0], rows, &mut out).unwrap();
                assert_eq!(out, [-0.25, 3.0], "{path}");
            }
        }
    }

    #[test]
    fn wrong_lengths_are_errors() {
        let mut s = [0.0; 3];
        let err = scores(
            KernelPath::Scalar,
            &[1.0; 4],
            HistoryRows::F32(&[0.0; 8]),
            1.0,
            &mut s,
        )
        .unwrap_err();
        assert!(err.to_string().contains("keys"), "{err}");
        let mut out = [0.0; 4];
        assert!(weighted_sum(
            KernelPath::Scalar,
            &[1.0; 3],
            HistoryRows::F32(&[0.0; 8]),
            &mut out
        )
        .is_err());
    }

    /// By hand: equal scores give numerators of exactly 1 and a total of their count; the
    /// maximum is subtracted first (no overflow at 1000) and ignores NaN; an empty run totals 0.
    #[test]
    fn softmax_exponentials_known_answers() {
        for path in KernelPath::supported() {
            for n in [1, 7, 8, 11, 40] {
                let mut x = vec![1000.0f32; n];
                let total = softmax_exponentials(path, &mut x).unwrap();
                assert_eq!(total, n as f32, "{path}, {n} equal scores");
                assert!(x.iter().all(|&v| v == 1.0), "{path}: {x:?}");
            }
            let mut x = vec![0.0f32, -1.0, 2.0f32.ln() - 1.0];
            let total = softmax_exponentials(path, &mut x).unwrap();
            let want = [1.0, (-1.0f64).exp(), 2.0 * (-1.0f64).exp()];
            for (got, want) in x.iter().zip(want) {
                assert!((*got as f64 - want).abs() < 1e-6 * want, "{path}: {x:?}");
            }
            assert!(
                (total as f64 - want.iter().sum::<f64>()).abs() < 1e-6,
                "{path}"
            );
            let mut x = vec![f32::NAN, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0];
            let total = softmax_exponentials(path, &mut x).unwrap();
            assert!(x[0].is_nan() && total.is_nan(), "{path}: {x:?}");
            assert_eq!(x[1], 1.0, "{path}: NaN taken for the maximum");
            assert_eq!(softmax_exponentials(path, &mut []).unwrap(), 0.0);
        }
    }

    proptest! {
        #[test]
        fn softmax_exponentials_every_path_equals_the_reference(
            scores in proptest::collection::vec(-60.0f32..60.0, 0..90),
        ) {
            let mut want = scores.clone();
            let want_total = softmax_exponentials_reference(&mut want);
            for path in KernelPath::supported() {
                let mut got = scores.clone();
                let total = softmax_exponentials(path, &mut got).unwrap();
                prop_assert_eq!(total.to_bits(), want_total.to_bits(), "total, {}", path);
                prop_assert_eq!(
                    got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    "numerators, {}", path
                );
            }
        }

        #[test]
        fn every_path_equals_the_reference_bit_for_bit(
            hd in 1usize..140, positions in 0usize..70, seed in 0u64..1000,
        ) {
            let q = values(hd, seed);
            let k = values(positions * hd, seed + 1);
            let k16: Vec<f16> = k.iter().map(|&v| f16::from_f32(v)).collect();
            let w = values(positions, seed + 2);
            let start = values(hd, seed + 3);
            for rows in [HistoryRows::F32(&k), HistoryRows::F16(&k16)] {
                let mut want_s = vec![0.0; positions];
                scores_reference(&q, rows, 0.125, &mut want_s);
                let mut want_o = start.clone();
                weighted_sum_reference(&w, rows, &mut want_o);
                for path in KernelPath::supported() {
                    let mut s = vec![f32::NAN; positions];
                    scores(path, &q, rows, 0.125, &mut s).unwrap();
                    prop_assert_eq!(
                        s.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        want_s.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        "scores, {}", path
                    );
                    let mut o = start.clone();
                    weighted_sum(path, &w, rows, &mut o).unwrap();
                    prop_assert_eq!(
                        o.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        want_o.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        "weighted sum, {}", path
                    );
                }
            }
        }
    }
}
