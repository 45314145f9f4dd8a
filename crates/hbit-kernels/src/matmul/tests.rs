//! Every kernel path against the reference definition, bit for bit.

use super::*;
use crate::pack::{LutPacked, RowPacked, TriplePacked, LUT_CHUNK_COLS};
use crate::quant::{quantize_activations, ActBits, TernaryWeights};
use proptest::prelude::*;

struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn ternary(&mut self, rows: usize, cols: usize) -> TernaryWeights {
        let codes = (0..rows * cols)
            .map(|_| (self.next() % 3) as i8 - 1)
            .collect();
        TernaryWeights::from_codes(rows, cols, 0.5 + (self.next() % 100) as f32 / 100.0, codes)
            .unwrap()
    }
    fn activations(&mut self, tokens: usize, cols: usize, bits: ActBits) -> QuantizedActivations {
        let x: Vec<f32> = (0..tokens * cols)
            .map(|_| {
                let v = (self.next() % 20001) as f32 / 1000.0 - 10.0;
                // Occasional outliers push INT4 codes to both clip limits.
                if self.next().is_multiple_of(50) {
                    v * 40.0
                } else {
                    v
                }
            })
            .collect();
        quantize_activations(&x, tokens, cols, bits).unwrap()
    }
}

/// `Σ_k Wq[r, k] · xq[t, k]` in i32: the sum every kernel's integer part must produce.
fn reference_dot(w: &TernaryWeights, x: &QuantizedActivations, t: usize, r: usize) -> i32 {
    let wr = &w.codes[r * w.cols..(r + 1) * w.cols];
    wr.iter()
        .zip(x.token(t))
        .map(|(&a, &b)| a as i32 * b as i32)
        .sum()
}

/// `got[(t − tokens.start) · rows.len() + (r − rows.start)]` equals [`reference_dot`] for every
/// row and token of the ranges.
fn assert_dots_are_reference(
    got: &[i32],
    w: &TernaryWeights,
    x: &QuantizedActivations,
    rows: Range<usize>,
    tokens: Range<usize>,
    what: &str,
) {
    assert_eq!(got.len(), rows.len() * tokens.len(), "{what}: length");
    for (ti, t) in tokens.enumerate() {
        for (ri, r) in rows.clone().enumerate() {
            assert_eq!(
                got[ti * rows.len() + ri],
                reference_dot(w, x, t, r),
                "{what}, token {t}, row {r}"
            );
        }
    }
}

fn assert_bits_equal(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.to_bits(), w.to_bits(), "{what}: element {i}: {g} vs {w}");
    }
}

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
}

fn check_all_paths(w: &TernaryWeights, x8: &QuantizedActivations, x4: &QuantizedActivations) {
    let row = RowPacked::pack(w);
    let lut = LutPacked::pack(w);
    let want8 = matmul_reference(w, x8).unwrap();
    let want4 = matmul_reference(w, x4).unwrap();
    for path in crate::cpu::KernelPath::supported() {
        let mut y = vec![f32::NAN; x8.tokens * w.rows];
        matmul_int8_with(path, &row, x8, &mut y).unwrap();
        assert_bits_equal(
            &y,
            &want8,
            &format!("int8 {path} {}x{} t{}", w.rows, w.cols, x8.tokens),
        );
        let mut y = vec![f32::NAN; x4.tokens * w.rows];
        matmul_int4_with(path, &lut, x4, &mut y).unwrap();
        assert_bits_equal(
            &y,
            &want4,
            &format!("int4 {path} {}x{} t{}", w.rows, w.cols, x4.tokens),
        );
        // 4-bit codes through the multiply-add kernels: the same integers, the same bits.
        let mut y = vec![f32::NAN; x4.tokens * w.rows];
        matmul_int8_with(path, &row, x4, &mut y).unwrap();
        assert_bits_equal(
            &y,
            &want4,
            &format!(
                "int4 on int8 rows {path} {}x{} t{}",
                w.rows, w.cols, x4.tokens
            ),
        );
    }
}

#[test]
fn reference_known_answer() {
    // W = [[1, 0, -1], [1, 1, 1]], alpha 0.5; x codes [3, -2, 5] with scale 0.25.
    let w = TernaryWeights::from_codes(2, 3, 0.5, vec![1, 0, -1, 1, 1, 1]).unwrap();
    let x = QuantizedActivations::from_codes(ActBits::Int8, 1, 3, &[3, -2, 5], vec![0.25]).unwrap();
    // dots: 3 - 5 = -2 and 3 - 2 + 5 = 6; y = 0.5 * 0.25 * dot.
    assert_eq!(matmul_reference(&w, &x).unwrap(), vec![-0.25, 0.75]);
    let mut y = vec![0.0; 2];
    matmul_int8(&RowPacked::pack(&w), &x, &mut y).unwrap();
    assert_eq!(y, vec![-0.25, 0.75]);
}

#[test]
fn extreme_codes_at_overflow_limits() {
    // Longest accumulations with the largest magnitudes: all weights +1 or -1, all activations
    // at the most negative code, over 16384 columns and more than one tile of tokens.
    let cols = 16384;
    for &wv in &[1i8, -1] {
        let w = TernaryWeights::from_codes(17, cols, 1.0, vec![wv; 17 * cols]).unwrap();
        let x8 = QuantizedActivations::from_codes(
            ActBits::Int8,
            9,
            cols,
            &vec![-128; 9 * cols],
            vec![1.0; 9],
        )
        .unwrap();
        let x4 = QuantizedActivations::from_codes(
            ActBits::Int4,
            5,
            cols,
            &vec![-8; 5 * cols],
            vec![1.0; 5],
        )
        .unwrap();
        check_all_paths(&w, &x8, &x4);
        let y = matmul_reference(&w, &x8).unwrap();
        assert_eq!(y[0], (wv as i32 * -128 * cols as i32) as f32);
    }
}

#[test]
fn shape_errors_are_typed() {
    let mut g = Lcg(5);
    let w = g.ternary(4, 10);
    let x = g.activations(2, 11, ActBits::Int8);
    let mut y = vec![0.0; 8];
    assert!(matches!(
        matmul_int8(&RowPacked::pack(&w), &x, &mut y),
        Err(KernelError::ShapeMismatch {
            expected: 10,
            found: 11,
            ..
        })
    ));
    let x = g.activations(2, 10, ActBits::Int8);
    assert!(matches!(
        matmul_int4(&LutPacked::pack(&w), &x, &mut y),
        Err(KernelError::ActivationBitsMismatch {
            expected: 4,
            found: 8
        })
    ));
    let mut short = vec![0.0; 7];
    assert!(matches!(
        matmul_int8(&RowPacked::pack(&w), &x, &mut short),
        Err(KernelError::LengthMismatch {
            expected: 8,
            found: 7,
            ..
        })
    ));
    for path in crate::cpu::KernelPath::ALL {
        let r = matmul_int8_with(path, &RowPacked::pack(&w), &x, &mut y);
        assert_eq!(r.is_ok(), path.is_supported(), "{path}");
    }
}

#[test]
fn threads_do_not_change_results() {
    let mut g = Lcg(11);
    let w = g.ternary(100, 777);
    let x8 = g.activations(13, 777, ActBits::Int8);
    let x4 = g.activations(13, 777, ActBits::Int4);
    let want8 = matmul_reference(&w, &x8).unwrap();
    let want4 = matmul_reference(&w, &x4).unwrap();
    for threads in [1, 2, 3, 7] {
        pool(threads).install(|| {
            let mut y = vec![0.0; 13 * 100];
            matmul_int8(&RowPacked::pack(&w), &x8, &mut y).unwrap();
            assert_bits_equal(&y, &want8, &format!("int8 threads {threads}"));
            matmul_int4(&LutPacked::pack(&w), &x4, &mut y).unwrap();
            assert_bits_equal(&y, &want4, &format!("int4 threads {threads}"));
            let mut ys = [vec![0.0; 13 * 100], vec![0.0; 13 * 100]];
            let [a, b] = &mut ys;
            let row = RowPacked::pack(&w);
            matmul_int8_many(&[&row, &row], &x4, &mut [a, b]).unwrap();
            for y in &ys {
                assert_bits_equal(y, &want4, &format!("int4 on int8 rows threads {threads}"));
            }
        });
    }
}

/// A shape past every blocking boundary at once: several column blocks of the INT4 tile
/// (1024 columns for four tokens), token tiles of 4, 4, 4 and 1 sharing one table buffer, INT4
/// tiles over pairs of row blocks and a single last one (34 row blocks, 17 per part on two
/// threads), and more row shares than threads (GEMM calls are cut into several shares per
/// thread). One token
/// alone takes whole rows per tile call, longer than the AVX2 tile's 16-bit segment (2016
/// columns) and the AVX-512 tile's column-block cap (2048).
#[test]
fn blocks_tiles_and_shares_cover_every_output() {
    let mut g = Lcg(23);
    let (rows, cols) = (530, 2300);
    let w = g.ternary(rows, cols);
    for tokens in [13, 1] {
        let x8 = g.activations(tokens, cols, ActBits::Int8);
        let x4 = g.activations(tokens, cols, ActBits::Int4);
        for threads in [2, 3] {
            pool(threads).install(|| check_all_paths(&w, &x8, &x4));
        }
    }
}

/// INT4 products whose tables outweigh their weights split their token tiles across the threads
/// instead of their rows: 70 rows and 49 tokens (13 tiles of 4 or 7 of 8, the last of one
/// token) take that split on 2 and 3 threads, alone and as a multi-matrix call, and equal the
/// reference.
#[test]
fn token_split_covers_every_output() {
    let mut g = Lcg(41);
    let (cols, tokens) = (700, 49);
    let ws = [g.ternary(70, cols), g.ternary(33, cols)];
    let x8 = g.activations(tokens, cols, ActBits::Int8);
    let x4 = g.activations(tokens, cols, ActBits::Int4);
    for threads in [2, 3] {
        pool(threads).install(|| {
            for token_tile in [4, 8] {
                assert!(lut_split_by_tokens(70, tokens, token_tile));
                assert!(lut_split_by_tokens(103, tokens, token_tile));
                assert!(!lut_split_by_tokens(70 * 32, tokens, token_tile));
            }
            check_all_paths(&ws[0], &x8, &x4);
            let packed: Vec<LutPacked> = ws.iter().map(LutPacked::pack).collect();
            let refs: Vec<&LutPacked> = packed.iter().collect();
            let mut got = [vec![f32::NAN; 70 * tokens], vec![f32::NAN; 33 * tokens]];
            let [a, b] = &mut got;
            matmul_int4_many(&refs, &x4, &mut [a.as_mut_slice(), b.as_mut_slice()]).unwrap();
            for (y, w) in got.iter().zip(&ws) {
                assert_bits_equal(y, &matmul_reference(w, &x4).unwrap(), "token split, many");
            }
        });
    }
}

/// Every lookup tile this CPU runs, whatever path the environment forces (the AVX-512 path has
/// two: `vpshufb` with F+BW alone, `vpermb` where VBMI and VNNI are present), gives the exact
/// i32 sums of the definition: token counts that fill, split and leave partial token tiles of 4
/// and of 8, row ranges that start on a later row block and end inside one, one column block
/// and several (the F+BW tile's 2048-column cap).
#[test]
fn every_lut_tile_equals_reference_sums() {
    let mut g = Lcg(77);
    let tiles = lut::LutTile::supported();
    assert!(tiles.contains(&lut::LutTile::Scalar));
    for (rows, cols) in [(40, 300), (33, 2600), (16, 256), (70, 4100)] {
        let w = g.ternary(rows, cols);
        let packed = LutPacked::pack(&w);
        for tokens in [1, 3, 4, 5, 8, 9, 17] {
            let x = g.activations(tokens, cols, ActBits::Int4);
            for &tile in &tiles {
                let tables = lookup::TokenTables::build(
                    &lut::Pairs(tile),
                    &x,
                    x.stride / LUT_CHUNK_COLS,
                    true,
                );
                let token_tile = tile.token_tile();
                let first_tokens = if tokens > token_tile { token_tile } else { 0 };
                let first_row = if rows > 16 { 16 } else { 0 };
                for (row_range, token_range) in [
                    (0..rows, 0..tokens),
                    (first_row..rows, first_tokens..tokens),
                ] {
                    let got = lut::dots(
                        tile,
                        &packed,
                        &x,
                        &tables,
                        row_range.clone(),
                        token_range.clone(),
                    );
                    let what = format!("{tile:?}: {rows}x{cols}, {tokens} tokens");
                    assert_dots_are_reference(&got, &w, &x, row_range, token_range, &what);
                }
            }
        }
    }
}

/// The table builder of every lookup tile the CPU has writes the scalar builder's bytes and
/// nothing else: the gaps between chunks at a wider stride keep their fill. The activations
/// include codes at the INT4 clip limit −8.
#[test]
fn every_table_builder_equals_the_scalar_one() {
    let mut g = Lcg(79);
    for cols in [16, 48, 1024, 4112] {
        let x = g.activations(3, cols, ActBits::Int4);
        let codes = &x.codes[..x.stride];
        assert!(
            codes.contains(&-8) || cols < 1024,
            "no -8 among {cols} codes"
        );
        for stride in [64, 3 * 64, 8 * 64] {
            let want = lut::token_tables(lut::LutTile::Scalar, codes, stride);
            for tile in lut::LutTile::supported() {
                assert_eq!(
                    lut::token_tables(tile, codes, stride),
                    want,
                    "{tile:?}: {cols} columns, chunk stride {stride}"
                );
            }
        }
    }
}

/// Every three-weight tile the CPU has gives the definition's i32 sums: odd row counts (partial
/// row blocks), widths that are no multiple of 12 (partial groups and chunks), 1..=17 tokens
/// (partial 8-token tiles), and row / token ranges that start past the first block and tile.
/// The tables of every builder are byte-identical to the scalar builder's.
#[test]
fn every_triple_tile_equals_reference_sums() {
    let mut g = Lcg(80);
    // 256 and 4096 columns: the last chunk reaches past the activations' padded row.
    for (rows, cols) in [
        (40, 300),
        (33, 2600),
        (16, 256),
        (70, 4100),
        (17, 13),
        (20, 4096),
    ] {
        let w = g.ternary(rows, cols);
        let packed = TriplePacked::pack(&w);
        for tokens in [1, 3, 8, 9, 17] {
            let x = g.activations(tokens, cols, ActBits::Int4);
            let build = |tile| {
                lookup::TokenTables::build(&triple::Triples(tile), &x, packed.chunks(), true)
            };
            let scalar = build(triple::TripleTile::Scalar);
            for tile in triple::TripleTile::supported() {
                let tables = build(tile);
                assert!(
                    tables.bytes() == scalar.bytes(),
                    "{tile:?} tables, {rows}x{cols}"
                );
                let first_row = if rows > 16 { 16 } else { 0 };
                let first_token = if tokens > 8 { 8 } else { 0 };
                for (row_range, token_range) in
                    [(0..rows, 0..tokens), (first_row..rows, first_token..tokens)]
                {
                    let got = triple::dots(
                        tile,
                        &packed,
                        &tables,
                        row_range.clone(),
                        token_range.clone(),
                    );
                    let what = format!("{tile:?}: {rows}x{cols}, {tokens} tokens");
                    assert_dots_are_reference(&got, &w, &x, row_range, token_range, &what);
                }
            }
        }
    }
}

/// The three-weight product equals the definition bit for bit on the active path, split by
/// rows (few tokens) and by token tiles (40 tokens over 50 rows), and refuses INT8 activations
/// and mismatched shapes.
#[test]
fn matmul_int4_triples_equals_reference_and_checks_operands() {
    let mut g = Lcg(81);
    let (rows, cols) = (50, 777);
    let w = g.ternary(rows, cols);
    let packed = TriplePacked::pack(&w);
    for tokens in [1, 8, 13, 40] {
        let x = g.activations(tokens, cols, ActBits::Int4);
        let mut y = vec![0.0f32; tokens * rows];
        matmul_int4_triples(&packed, &x, &mut y).unwrap();
        let want = matmul_reference(&w, &x).unwrap();
        assert!(y.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()));
    }
    let x8 = g.activations(2, cols, ActBits::Int8);
    let mut y = vec![0.0f32; 2 * rows];
    assert!(matches!(
        matmul_int4_triples(&packed, &x8, &mut y),
        Err(KernelError::ActivationBitsMismatch { .. })
    ));
    let narrow = g.activations(2, cols - 1, ActBits::Int4);
    assert!(matches!(
        matmul_int4_triples(&packed, &narrow, &mut y),
        Err(KernelError::ShapeMismatch { .. })
    ));
    let x = g.activations(2, cols, ActBits::Int4);
    let mut short = vec![0.0f32; 2 * rows - 1];
    assert!(matches!(
        matmul_int4_triples(&packed, &x, &mut short),
        Err(KernelError::LengthMismatch { .. })
    ));
}

/// `dots` (an INT8 tile that the dispatch may never take on this CPU) gives the definition's i32
/// sums: odd row counts, 1..=17 tokens (full and partial 8-token tiles), several column blocks.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn assert_int8_tile_equals_reference_sums(
    seed: u64,
    dots: fn(&RowPacked, &QuantizedActivations, std::ops::Range<usize>) -> Vec<i32>,
) {
    let mut g = Lcg(seed);
    for (rows, cols) in [(37, 300), (70, 2600), (65, 1024)] {
        let w = g.ternary(rows, cols);
        let packed = RowPacked::pack(&w);
        for tokens in [1, 7, 8, 9, 17] {
            let x = g.activations(tokens, cols, ActBits::Int8);
            for row_range in [0..rows, 5..rows] {
                let got = dots(&packed, &x, row_range.clone());
                for t in 0..tokens {
                    for (i, r) in row_range.clone().enumerate() {
                        assert_eq!(
                            got[t * row_range.len() + i],
                            reference_dot(&w, &x, t, r),
                            "{rows}x{cols}, {tokens} tokens, token {t}, row {r}"
                        );
                    }
                }
            }
        }
    }
}

/// The AVX-512 INT8 tile without VNNI (`vpmaddubsw`), on any AVX-512 CPU, including the VNNI
/// ones whose path never takes it.
#[cfg(target_arch = "x86_64")]
#[test]
fn avx512_int8_tile_without_vnni_equals_reference_sums() {
    if !KernelPath::Avx512.is_supported() {
        return;
    }
    assert_int8_tile_equals_reference_sums(78, mad::dots_avx512_bw);
}

/// The NEON INT8 tile without the dot-product extension (`smull`/`sadalp`), also on CPUs with
/// `sdot` whose path never takes it.
#[cfg(target_arch = "aarch64")]
#[test]
fn neon_int8_tile_without_sdot_equals_reference_sums() {
    assert!(
        KernelPath::Neon.is_supported(),
        "every AArch64 Linux CPU has NEON"
    );
    assert_int8_tile_equals_reference_sums(79, mad::dots_neon_smull);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn every_path_equals_reference(
        rows in 1usize..70, cols in 1usize..1300, tokens in 1usize..20, seed in any::<u64>()
    ) {
        let mut g = Lcg(seed);
        let w = g.ternary(rows, cols);
        let x8 = g.activations(tokens, cols, ActBits::Int8);
        let x4 = g.activations(tokens, cols, ActBits::Int4);
        check_all_paths(&w, &x8, &x4);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    /// The multi-matrix calls equal one call per matrix, bit for bit, for any split of rows
    /// over threads (1..3 threads, row counts that are not multiples of the row block).
    #[test]
    fn many_equals_one_at_a_time(
        rows in proptest::collection::vec(1usize..70, 1..4),
        cols in 1usize..600,
        tokens in 1usize..5,
        threads in 1usize..4,
        seed in 0u64..1000,
    ) {
        let mut g = Lcg(seed);
        let ws: Vec<TernaryWeights> = rows.iter().map(|&r| g.ternary(r, cols)).collect();
        let pool = pool(threads);
        for bits in [ActBits::Int8, ActBits::Int4] {
            let x = g.activations(tokens, cols, bits);
            let want: Vec<Vec<f32>> = ws.iter().map(|w| matmul_reference(w, &x).unwrap()).collect();
            let mut got: Vec<Vec<f32>> = rows.iter().map(|&r| vec![0.0; r * tokens]).collect();
            let mut ys: Vec<&mut [f32]> = got.iter_mut().map(|y| y.as_mut_slice()).collect();
            pool.install(|| match bits {
                ActBits::Int8 => {
                    let packed: Vec<RowPacked> = ws.iter().map(RowPacked::pack).collect();
                    let refs: Vec<&RowPacked> = packed.iter().collect();
                    matmul_int8_many(&refs, &x, &mut ys).unwrap()
                }
                ActBits::Int4 => {
                    let packed: Vec<LutPacked> = ws.iter().map(LutPacked::pack).collect();
                    let refs: Vec<&LutPacked> = packed.iter().collect();
                    matmul_int4_many(&refs, &x, &mut ys).unwrap()
                }
            });
            for (g, w) in got.iter().zip(&want) {
                assert_bits_equal(g, w, "many");
            }
        }
        // Three-weight layout: few tokens (own tables, row split) and 36 more (token split).
        let packed: Vec<TriplePacked> = ws.iter().map(TriplePacked::pack).collect();
        let refs: Vec<&TriplePacked> = packed.iter().collect();
        for tokens in [tokens, tokens + 36] {
            let x = g.activations(tokens, cols, ActBits::Int4);
            let mut got: Vec<Vec<f32>> = rows.iter().map(|&r| vec![0.0; r * tokens]).collect();
            let mut ys: Vec<&mut [f32]> = got.iter_mut().map(|y| y.as_mut_slice()).collect();
            pool.install(|| matmul_int4_triples_many(&refs, &x, &mut ys).unwrap());
            for (g, w) in got.iter().zip(&ws) {
                assert_bits_equal(g, &matmul_reference(w, &x).unwrap(), "triples, many");
            }
        }
    }
}

proptest! {
    /// The other half of `SharedOutput`'s safety promise (the fork-join's ordering is model
    /// checked in `parallel::loom_tests`): the pieces `split_many_with` hands out never overlap,
    /// cover every row of every matrix once, and start on `align` boundaries.
    #[test]
    fn split_pieces_are_disjoint_aligned_and_cover_every_row(
        rows in proptest::collection::vec(0usize..300, 1..4),
        align in 1usize..40,
        shares in 1usize..5,
        threads in 1usize..5,
    ) {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        let pieces = std::sync::Mutex::new(Vec::new());
        pool.install(|| {
            split_many_with(&rows, align, shares, || (), |_, m, range| {
                pieces.lock().unwrap().push((m, range));
            })
        });
        let pieces = pieces.into_inner().unwrap();
        for (m, &r) in rows.iter().enumerate() {
            let mut mine: Vec<Range<usize>> =
                pieces.iter().filter(|p| p.0 == m).map(|p| p.1.clone()).collect();
            mine.sort_by_key(|p| p.start);
            let mut next = 0;
            for p in &mine {
                prop_assert!(!p.is_empty() && p.start == next && p.start % align == 0, "{mine:?}");
                next = p.end;
            }
            prop_assert_eq!(next, r, "matrix {} of {:?}: {:?}", m, rows, mine);
        }
    }
}

/// Debug builds hand the kernels poisoned table storage, so a read of a byte no builder wrote
/// is a wrong product the bit-exact tests above see, not whatever the allocator left there.
#[cfg(debug_assertions)]
#[test]
fn table_storage_is_poisoned_in_debug_builds() {
    let mut store = lookup::TableStore::new(1000);
    let bytes = store.uninit_mut();
    assert_eq!(bytes.len(), 1000);
    // SAFETY: debug builds fill every byte of the store.
    assert!(bytes
        .iter()
        .all(|b| unsafe { b.assume_init() } == lookup::POISON));
}

/// Two matrices (70 and 33 rows) of one layout multiplied in one call cut as `split` says
/// (`None`: as pinned, else built in), equal to `want` bit for bit.
fn assert_many_split_is_reference<T: PackedTernary>(
    ws: &[T],
    x: &QuantizedActivations,
    want: &[Vec<f32>],
    split: Option<Split>,
    what: &str,
) {
    let refs: Vec<&T> = ws.iter().collect();
    let mut got = [vec![f32::NAN; 70 * x.tokens], vec![f32::NAN; 33 * x.tokens]];
    let [a, b] = &mut got;
    T::matmul_many_split(&refs, x, &mut [a, b], split).unwrap();
    for (y, w) in got.iter().zip(want) {
        assert_bits_equal(y, w, what);
    }
}

/// Every split `hbit tune` may pin, and the built-in rules, give the reference's bits in every
/// layout: two matrices in one call (rows 70 and 33, not multiples of a row block), token counts
/// in each batch bucket (1, 3, 13, 49: partial and whole token tiles), on 2 and 3 threads; then
/// the same with each split pinned for the call's key instead of passed.
#[test]
fn every_split_equals_reference_in_every_layout() {
    let mut g = Lcg(61);
    let cols = 1200;
    let ws = [g.ternary(70, cols), g.ternary(33, cols)];
    let rows_pk: Vec<RowPacked> = ws.iter().map(RowPacked::pack).collect();
    let pairs: Vec<LutPacked> = ws.iter().map(LutPacked::pack).collect();
    let triples: Vec<TriplePacked> = ws.iter().map(TriplePacked::pack).collect();
    let every_split: Vec<Split> = [1, 2, 3, 4]
        .into_iter()
        .flat_map(|shares| {
            [
                Split::Rows { shares },
                Split::RowsOwnTables { shares },
                Split::Tokens { shares },
            ]
        })
        .chain([Split::Builtin])
        .collect();
    for tokens in [1, 3, 13, 49] {
        let x4 = g.activations(tokens, cols, ActBits::Int4);
        let x8 = g.activations(tokens, cols, ActBits::Int8);
        let want = |x: &QuantizedActivations| -> Vec<Vec<f32>> {
            ws.iter().map(|w| matmul_reference(w, x).unwrap()).collect()
        };
        let (want4, want8) = (want(&x4), want(&x8));
        for threads in [2, 3] {
            pool(threads).install(|| {
                for split in every_split.iter().copied().map(Some).chain([None]) {
                    let what = |layout: &str| format!("{layout} {split:?} t{tokens} {threads}th");
                    assert_many_split_is_reference(&rows_pk, &x8, &want8, split, &what("int8"));
                    assert_many_split_is_reference(&pairs, &x4, &want4, split, &what("pairs"));
                    assert_many_split_is_reference(&triples, &x4, &want4, split, &what("triples"));
                }
            });
        }
        // Pinned rather than passed: the products look their split up by kind, total rows
        // (70 + 33), columns and bucket.
        let _pinning = split::PIN_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        for &split in &every_split {
            let key = |kind| SplitKey {
                kind,
                rows: 103,
                cols,
                bucket: Bucket::of(tokens),
            };
            let pinned: std::collections::BTreeMap<SplitKey, Split> = [
                ProductKind::Int8Rows,
                ProductKind::Int4Pairs,
                ProductKind::Int4Triples,
            ]
            .into_iter()
            .map(|kind| (key(kind), split))
            .collect();
            let threads = rayon::current_num_threads();
            choose_splits(threads, pinned);
            assert_eq!(
                chosen_split(&key(ProductKind::Int4Triples), threads),
                Some(split)
            );
            let what = |layout: &str| format!("pinned {layout} {split:?} t{tokens}");
            assert_many_split_is_reference(&pairs, &x4, &want4, None, &what("pairs"));
            assert_many_split_is_reference(&triples, &x4, &want4, None, &what("triples"));
            assert_many_split_is_reference(&rows_pk, &x8, &want8, None, &what("int8"));
        }
        choose_splits(0, Default::default());
    }
}
