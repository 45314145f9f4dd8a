//! The packed model file: round trip, f16 embeddings, and clear errors for damaged files.

use std::collections::HashMap;
use std::path::Path;

use hbit_engine::checksum::ChecksumStatus;
use hbit_engine::format::{
    load_packed, load_packed_opts, load_packed_with, write_packed, LoadMode, Verify,
};
use hbit_engine::{Engine, Int4Layout, KvBits, Logits, Weights};
use hbit_kernels::ActBits;
use hbit_train::config::{preset, Variant};
use hbit_train::BitnetModel;

fn weights(variant: Variant, bits: ActBits, half: bool) -> Weights {
    let config = preset("micro", variant, bits).unwrap();
    let model = BitnetModel::init(&config, 21).unwrap();
    let latent: HashMap<String, Vec<f32>> = model
        .named_vars()
        .into_iter()
        .map(|(n, v)| (n, v.as_tensor().flatten_all().unwrap().to_vec1().unwrap()))
        .collect();
    Weights::from_latent(&config, &latent, half, Path::new("<test>")).unwrap()
}

fn logits(w: Weights, toks: &[u32]) -> Vec<f32> {
    let engine = Engine::new(w);
    let mut cache = engine.new_cache(KvBits::F16);
    engine
        .forward(&mut [&mut cache], &[toks], Logits::All)
        .unwrap()
        .remove(0)
}

const TOKENS: [u32; 6] = [3, 14, 15, 92, 65, 35];

#[test]
fn packed_file_round_trips_exactly() {
    let dir = tempdir();
    for (variant, bits) in [
        (Variant::BitnetV2, ActBits::Int4),
        (Variant::BitnetB158, ActBits::Int8),
    ] {
        for half in [false, true] {
            let w = weights(variant, bits, half);
            let path = dir.join(format!("{}-{}-{half}.hbit", variant.name(), bits.bits()));
            write_packed(&path, &w, Some("{\"tok\": 1}"), Some("{{ messages }}")).unwrap();
            let loaded = load_packed(&path).unwrap();
            assert_eq!(loaded.tokenizer_json.as_deref(), Some("{\"tok\": 1}"));
            assert_eq!(loaded.chat_template.as_deref(), Some("{{ messages }}"));
            assert_eq!(loaded.weights.config, w.config);
            assert_eq!(loaded.weights.embed_tokens.is_f16(), half);
            assert_eq!(loaded.file_bytes, std::fs::metadata(&path).unwrap().len());
            // The mode of any file `File::create` makes here (not the 0600 of the temporary
            // file it was written through).
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let probe = dir.join("probe");
                std::fs::File::create(&probe).unwrap();
                let usual = std::fs::metadata(&probe).unwrap().permissions().mode();
                std::fs::remove_file(&probe).unwrap();
                let mode = std::fs::metadata(&path).unwrap().permissions().mode();
                assert_eq!(mode, usual, "{mode:o} against {usual:o}");
            }
            assert!(matches!(loaded.checksum, ChecksumStatus::Verified(_)));
            let want = logits(w, &TOKENS);
            let got = logits(loaded.weights, &TOKENS);
            assert!(
                got == want,
                "{} a{} half={half}",
                variant.name(),
                bits.bits()
            );
            // A mapped file gives the same model as a read one.
            let mapped = load_packed_with(&path, LoadMode::Map).unwrap();
            assert_eq!(mapped.file_bytes, loaded.file_bytes);
            assert!(logits(mapped.weights, &TOKENS) == want, "mapped");
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Both INT4 layouts round trip and give the same logits (the same integer products); the
/// three-weight file is smaller; a version-1 file (pairs, no layout key) still loads.
#[test]
fn both_int4_layouts_round_trip_and_version_1_loads() {
    let dir = tempdir();
    let base = weights(Variant::BitnetV2, ActBits::Int4, true);
    let want = logits(base.clone(), &TOKENS);
    let mut sizes = Vec::new();
    for layout in [Int4Layout::Pairs, Int4Layout::Triples] {
        let w = base.clone().with_int4_layout(layout);
        assert_eq!(w.int4_layout(), Some(layout));
        assert!(logits(w.clone(), &TOKENS) == want, "{layout:?} in memory");
        let path = dir.join(format!("{}.hbit", layout.name()));
        write_packed(&path, &w, None, None).unwrap();
        for mode in [LoadMode::Read, LoadMode::Map] {
            let loaded = load_packed_with(&path, mode).unwrap();
            assert_eq!(loaded.weights.int4_layout(), Some(layout));
            assert!(
                logits(loaded.weights, &TOKENS) == want,
                "{layout:?} {mode:?}"
            );
        }
        sizes.push(std::fs::metadata(&path).unwrap().len());
    }
    // The multiply-add layout on 4-bit codes: the same logits; a load-time choice only, so a
    // file of it is refused with the reason and nothing is left behind.
    let rows = base.clone().with_int4_layout(Int4Layout::Rows);
    assert_eq!(rows.int4_layout(), Some(Int4Layout::Rows));
    assert!(logits(rows.clone(), &TOKENS) == want, "rows in memory");
    let path = dir.join("rows.hbit");
    let e = write_packed(&path, &rows, None, None).unwrap_err();
    assert!(e.to_string().contains("load-time choice"), "{e}");
    assert!(!path.exists());
    assert!(
        sizes[1] < sizes[0],
        "triples {} vs pairs {} bytes",
        sizes[1],
        sizes[0]
    );

    // Version 1: the same header with the version digit changed (its layout key is ignored).
    let as_version_1 = |from: &str, to: &str| {
        let mut bytes = std::fs::read(dir.join(from)).unwrap();
        let key = b"\"format_version\":\"2\"";
        let at = bytes.windows(key.len()).position(|w| w == key).unwrap();
        bytes[at + key.len() - 2] = b'1';
        std::fs::write(dir.join(to), bytes).unwrap();
        load_packed_opts(&dir.join(to), LoadMode::Read, Verify::Skip)
    };
    let v1 = as_version_1("pairs.hbit", "v1.hbit").unwrap();
    assert_eq!(v1.weights.int4_layout(), Some(Int4Layout::Pairs));
    assert!(logits(v1.weights, &TOKENS) == want, "version 1");
    // A version-1 file holds pairs: three-weight tensors are refused by name and shape.
    let e = as_version_1("triples.hbit", "v1-triples.hbit")
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("v1-triples.hbit") && e.contains("expected shape"),
        "{e}"
    );

    // A three-weight sign sum that does not match its signs names the tensor.
    let good = std::fs::read(dir.join("triples.hbit")).unwrap();
    let (header, meta) = safetensors::SafeTensors::read_metadata(&good).unwrap();
    let name = "model.layers.0.mlp.down_proj.weight_sign_sums";
    let info = meta.info(name).unwrap();
    let mut bad = good.clone();
    bad[8 + header + info.data_offsets.0] ^= 2;
    std::fs::write(dir.join("bad-sums.hbit"), &bad).unwrap();
    let e = load_packed_opts(&dir.join("bad-sums.hbit"), LoadMode::Read, Verify::Skip)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("model.layers.0.mlp.down_proj.weight") && e.contains("sign sum"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn damaged_files_give_clear_errors_and_writes_are_atomic() {
    let dir = tempdir();
    let path = dir.join("model.hbit");
    let w = weights(Variant::BitnetV2, ActBits::Int8, true);
    write_packed(&path, &w, None, None).unwrap();
    let good = std::fs::read(&path).unwrap();

    // Truncated.
    let cut = dir.join("cut.hbit");
    std::fs::write(&cut, &good[..good.len() - 100]).unwrap();
    let e = load_packed(&cut).err().unwrap().to_string();
    assert!(
        e.contains("cut.hbit") && e.contains("not a complete hbit packed model"),
        "{e}"
    );

    // Not a model at all.
    let junk = dir.join("junk.hbit");
    std::fs::write(&junk, b"hello, world, this is not a model").unwrap();
    let e = load_packed(&junk).err().unwrap().to_string();
    assert!(e.contains("junk.hbit"), "{e}");

    // A plain safetensors file (e.g. a training checkpoint's weights) is refused by its tag.
    let plain = dir.join("plain.safetensors");
    let t =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![1], &[0u8; 4]).unwrap();
    safetensors::serialize_to_file(vec![("x", t)], None, &plain).unwrap();
    let e = load_packed(&plain).err().unwrap().to_string();
    assert!(
        e.contains("metadata `format`") && e.contains("hbit pack"),
        "{e}"
    );

    // A packed weight byte holding the invalid 2-bit code 3 names the tensor.
    let (header, _) = safetensors::SafeTensors::read_metadata(&good).unwrap();
    let meta = safetensors::SafeTensors::read_metadata(&good).unwrap().1;
    let name = "model.layers.1.mlp.down_proj.weight";
    let info = meta.info(name).unwrap();
    let mut bad = good.clone();
    bad[8 + header + info.data_offsets.0 + 5] = 0xff;
    let corrupt = dir.join("corrupt.hbit");
    std::fs::write(&corrupt, &bad).unwrap();
    let e = load_packed(&corrupt).err().unwrap().to_string();
    assert!(
        e.contains("corrupt.hbit") && e.contains("content checksum mismatch"),
        "{e}"
    );
    // Unchecked (`--no-verify`), the structural check still names the tensor.
    let e = load_packed_opts(&corrupt, LoadMode::Read, Verify::Skip)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains(name) && e.contains("invalid code"), "{e}");

    // A failed write (directory missing) leaves nothing behind and the old file intact.
    let e = write_packed(&dir.join("missing/model.hbit"), &w, None, None).unwrap_err();
    assert!(e.to_string().contains("missing"), "{e}");
    assert_eq!(std::fs::read(&path).unwrap(), good);
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("partial"))
        .collect();
    assert!(leftovers.is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "hbit-format-test-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn load_modes_parse_by_name_and_reject_others() {
    assert_eq!(LoadMode::parse("read").unwrap(), LoadMode::Read);
    assert_eq!(LoadMode::parse("MAP").unwrap(), LoadMode::Map);
    let e = LoadMode::parse("disk").unwrap_err().to_string();
    assert!(e.contains("read or map") && e.contains("disk"), "{e}");
}
