//! Layouts by hand, round trips through the writer, and damaged files.

use super::*;
use hbit_model::rng::SplitMix64;

fn path() -> &'static Path {
    Path::new("m.gguf")
}

fn random_codes(n: usize, seed: u64) -> Vec<i8> {
    let mut rng = SplitMix64::new(seed);
    (0..n).map(|_| (rng.next_u64() % 3) as i8 - 1).collect()
}

fn file(w: &GgufWriter) -> Gguf {
    Gguf::parse(path(), w.to_bytes().unwrap()).unwrap()
}

/// By hand: elements 0, 32, 64, 96 = −1, 0, +1, +1 are codes 0, 1, 2, 2 in bits 7-6, 5-4, 3-2,
/// 1-0 of byte 0: 0b00_01_10_10 = 0x1A; zeros elsewhere are code 1 (0x55 per byte); the
/// scale follows the 32 packed bytes.
#[test]
fn i2s_by_hand() {
    let mut codes = vec![0i8; 128];
    (codes[0], codes[32], codes[64], codes[96]) = (-1, 0, 1, 1);
    let bytes = encode_i2s(&codes, 0.25).unwrap();
    assert_eq!(bytes.len(), 128 / 4 + 32);
    assert_eq!(bytes[0], 0x1A);
    assert!(bytes[1..32].iter().all(|&b| b == 0x55));
    assert_eq!(&bytes[32..36], &0.25f32.to_le_bytes());
    let mut w = GgufWriter::new();
    w.tensor("w", &[1, 128], GgmlType::I2S, bytes).unwrap();
    let f = file(&w);
    let t = f.ternary("w").unwrap();
    assert_eq!((t.rows, t.cols, t.alpha), (1, 128, 0.25));
    assert_eq!(t.codes, codes);
    let v = f.floats("w").unwrap();
    assert_eq!(
        (v[0], v[32], v[64], v[96], v[1]),
        (-0.25, 0.0, 0.25, 0.25, 0.0)
    );
}

/// By hand: element 4j + 32l + m sits in bits 2l of `qs[j + m]`, least significant first:
/// elements 0, 32, 64, 96 = +1, −1, 0, +1 give `qs[0]` = 2 | 0 << 2 | 1 << 4 | 2 << 6 = 0x92;
/// element 128 is in `qs[32]`.
#[test]
fn tq2_0_by_hand() {
    let mut codes = vec![0i8; 256];
    (codes[0], codes[32], codes[64], codes[96], codes[128]) = (1, -1, 0, 1, -1);
    let bytes = encode_tq2_0(&codes, f16::from_f32(0.5)).unwrap();
    assert_eq!(bytes.len(), 66);
    assert_eq!(bytes[0], 0x92);
    assert_eq!(bytes[32], 0b01_01_01_00);
    assert_eq!(bytes[1], 0x55);
    let mut w = GgufWriter::new();
    w.tensor("w", &[1, 256], GgmlType::TQ2_0, bytes).unwrap();
    let t = file(&w).ternary("w").unwrap();
    assert_eq!((t.alpha, t.codes), (0.5, codes));
}

/// By hand: trits (2, 0, 1, 1, 2) are q = 2·81 + 0·27 + 1·9 + 1·3 + 2 = 176, stored as
/// ⌈176 · 256 / 243⌉ = 186; reading trit n multiplies by 3ⁿ mod 256 and keeps the top of ×3.
#[test]
fn tq1_0_by_hand() {
    let digits = [2, 0, 1, 1, 2];
    for (n, &want) in digits.iter().enumerate() {
        assert_eq!(trit(186, n), want, "trit {n}");
    }
    let mut codes = vec![0i8; 256];
    // Byte qs[0] holds elements 0, 32, 64, 96, 128 (first trit most significant).
    for (n, &d) in digits.iter().enumerate() {
        codes[32 * n] = d - 1;
    }
    codes[255] = 1; // qh[3], trit 3
    let bytes = encode_tq1_0(&codes, f16::from_f32(2.0)).unwrap();
    assert_eq!(bytes.len(), 54);
    assert_eq!(bytes[0], 186);
    let mut w = GgufWriter::new();
    w.tensor("w", &[1, 256], GgmlType::TQ1_0, bytes).unwrap();
    let t = file(&w).ternary("w").unwrap();
    assert_eq!((t.alpha, t.codes), (2.0, codes));
}

/// By hand: with d = 0.5 and scale 2 for sub-block 0, low nibble 1 and high bits 1 of element
/// 0 make q = 17 − 32 = −15, so y[0] = 0.5 · 2 · (−15) = −15; element 1 (nibble 0, high 0) is
/// −32 · 1 = −32; element 32 reads `ql[32]`'s low nibble and bits 3-2 of `qh[0]`.
#[test]
fn q6_k_by_hand() {
    let mut block = vec![0u8; 210];
    block[0] = 0x01; // ql[0] low nibble 1
    block[128] = 0b0000_1001; // qh[0]: bits 1-0 = 1 (element 0), bits 3-2 = 2 (element 32)
    block[192] = 2; // scales[0]
    block[194] = (-1i8) as u8; // scales[2], elements 32..48
    block[208..210].copy_from_slice(&f16::from_f32(0.5).to_le_bytes());
    let y = dequantize_q6_k(&block);
    assert_eq!(y[0], -15.0);
    assert_eq!(y[1], -32.0);
    // q = (0 | 2 << 4) − 32 = 0 for element 32, scale −1: 0.
    assert_eq!(y[32], 0.0);
    // Element 33: q = −32, scale −1, d 0.5: 16.
    assert_eq!(y[33], 16.0);
}

fn every_value() -> Vec<(String, Value)> {
    vec![
        ("u8".into(), Value::U8(200)),
        ("i8".into(), Value::I8(-3)),
        ("u16".into(), Value::U16(60000)),
        ("i16".into(), Value::I16(-30000)),
        ("u32".into(), Value::U32(4_000_000_000)),
        ("i32".into(), Value::I32(-5)),
        ("f32".into(), Value::F32(1e-5)),
        ("bool".into(), Value::Bool(true)),
        ("str".into(), Value::String("bitnet-b1.58 ünïcode".into())),
        (
            "tokens".into(),
            Value::Array(vec![
                Value::String("<s>".into()),
                Value::String("Ġthe".into()),
            ]),
        ),
        (
            "ids".into(),
            Value::Array(vec![Value::I32(1), Value::I32(-2)]),
        ),
        ("u64".into(), Value::U64(u64::MAX)),
        ("i64".into(), Value::I64(i64::MIN)),
        ("f64".into(), Value::F64(0.1)),
    ]
}

fn sample_file() -> (GgufWriter, Vec<i8>, Vec<f32>) {
    let mut w = GgufWriter::new();
    for (k, v) in every_value() {
        w.metadata(&k, v);
    }
    let codes = random_codes(3 * 512, 7);
    let floats: Vec<f32> = (0..3 * 40).map(|i| (i as f32 - 60.0) / 7.0).collect();
    let half: Vec<u8> = floats
        .iter()
        .flat_map(|&v| f16::from_f32(v).to_le_bytes())
        .collect();
    let brain: Vec<u8> = floats
        .iter()
        .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
        .collect();
    let plain: Vec<u8> = floats.iter().flat_map(|v| v.to_le_bytes()).collect();
    w.tensor(
        "i2s",
        &[3, 512],
        GgmlType::I2S,
        encode_i2s(&codes, 0.125).unwrap(),
    )
    .unwrap()
    .tensor(
        "tq2",
        &[3, 512],
        GgmlType::TQ2_0,
        encode_tq2_0(&codes, f16::from_f32(0.125)).unwrap(),
    )
    .unwrap()
    .tensor(
        "tq1",
        &[3, 512],
        GgmlType::TQ1_0,
        encode_tq1_0(&codes, f16::from_f32(0.125)).unwrap(),
    )
    .unwrap()
    .tensor("f32", &[3, 40], GgmlType::F32, plain)
    .unwrap()
    .tensor("f16", &[3, 40], GgmlType::F16, half)
    .unwrap()
    .tensor("bf16", &[3, 40], GgmlType::BF16, brain)
    .unwrap();
    (w, codes, floats)
}

#[test]
fn what_the_writer_writes_reads_back() {
    let (w, codes, floats) = sample_file();
    let f = file(&w);
    assert_eq!(f.version, VERSION);
    assert_eq!(f.metadata, every_value());
    assert_eq!(f.get("u32").and_then(Value::as_u64), Some(4_000_000_000));
    assert_eq!(f.get("i8").and_then(Value::as_u64), None);
    assert_eq!(f.alignment(), DEFAULT_ALIGNMENT);
    for name in ["i2s", "tq2", "tq1"] {
        let t = f.ternary(name).unwrap();
        assert_eq!((t.rows, t.cols, t.alpha), (3, 512, 0.125), "{name}");
        assert_eq!(t.codes, codes, "{name}");
        let v = f.floats(name).unwrap();
        assert!(v.iter().zip(&codes).all(|(&v, &c)| v == c as f32 * 0.125));
    }
    assert_eq!(f.floats("f32").unwrap(), floats);
    let half: Vec<f32> = floats.iter().map(|&v| f16::from_f32(v).to_f32()).collect();
    assert_eq!(f.floats("f16").unwrap(), half);
    let brain: Vec<f32> = floats.iter().map(|&v| bf16::from_f32(v).to_f32()).collect();
    assert_eq!(f.floats("bf16").unwrap(), brain);
    assert_eq!(f.tensor("f16").unwrap().shape(), [3, 40]);
    assert_eq!(f.tensor("f16").unwrap().dims, [40, 3]);
    // Every tensor starts on the alignment.
    assert!(f.tensors.iter().all(|t| t.offset % DEFAULT_ALIGNMENT == 0));
    let e = f.ternary("f32").unwrap_err().to_string();
    assert!(
        e.contains("f32") && e.contains("not ternary weights"),
        "{e}"
    );
    assert!(f
        .floats("nope")
        .unwrap_err()
        .to_string()
        .contains("missing"));
    // A custom alignment is honoured.
    let mut w = GgufWriter::new();
    w.metadata(ALIGNMENT_KEY, Value::U32(64));
    w.tensor("a", &[4], GgmlType::F32, vec![0; 16]).unwrap();
    w.tensor("b", &[4], GgmlType::F32, 1f32.to_le_bytes().repeat(4))
        .unwrap();
    let f = file(&w);
    assert_eq!((f.alignment(), f.tensor("b").unwrap().offset), (64, 64));
    assert_eq!(f.floats("b").unwrap(), [1.0; 4]);
}

#[test]
fn per_block_scales_must_agree_for_one_ternary_scale() {
    let mut codes = random_codes(512, 3);
    let mut bytes = encode_tq2_0(&codes, f16::from_f32(0.5)).unwrap();
    bytes[66 + 64..66 + 66].copy_from_slice(&f16::from_f32(0.25).to_le_bytes());
    let mut w = GgufWriter::new();
    w.tensor("w", &[2, 256], GgmlType::TQ2_0, bytes).unwrap();
    let f = file(&w);
    let e = f.ternary("w").unwrap_err().to_string();
    assert!(
        e.contains("per-block scales differ") && e.contains("block 1"),
        "{e}"
    );
    // floats() still reads it, each block at its own scale.
    let v = f.floats("w").unwrap();
    assert_eq!(v[256 + 5], codes[256 + 5] as f32 * 0.25);
    // A block of zeros may carry any scale.
    codes[256..].iter_mut().for_each(|c| *c = 0);
    let mut bytes = encode_tq2_0(&codes, f16::from_f32(0.5)).unwrap();
    bytes[66 + 64..66 + 66].copy_from_slice(&f16::ZERO.to_le_bytes());
    let mut w = GgufWriter::new();
    w.tensor("w", &[2, 256], GgmlType::TQ2_0, bytes).unwrap();
    assert_eq!(file(&w).ternary("w").unwrap().alpha, 0.5);
}

/// Floats that are `code · alpha` read back as those codes and alpha.
#[test]
fn ternary_floats_read_as_codes_and_scale() {
    let codes = random_codes(96, 9);
    let alpha = f16::from_f32(0.3).to_f32();
    let half: Vec<u8> = codes
        .iter()
        .flat_map(|&c| f16::from_f32(c as f32 * alpha).to_le_bytes())
        .collect();
    let mut w = GgufWriter::new();
    w.tensor("w", &[3, 32], GgmlType::F16, half).unwrap();
    let t = file(&w).ternary("w").unwrap();
    assert_eq!((t.alpha, t.codes), (alpha, codes));
}

#[test]
fn i2s_code_3_is_refused() {
    let mut bytes = encode_i2s(&random_codes(128, 5), 1.0).unwrap();
    bytes[7] |= 0b1100_0000;
    let mut w = GgufWriter::new();
    w.tensor("w", &[1, 128], GgmlType::I2S, bytes).unwrap();
    let e = file(&w).ternary("w").unwrap_err().to_string();
    assert!(e.contains("code 3") && e.contains("flat index 7"), "{e}");
}

/// Header bytes of a file with the given counts, then `rest`.
fn header(version: u32, tensors: u64, kv: u64, rest: &[u8]) -> Vec<u8> {
    let mut b = MAGIC.to_vec();
    b.extend_from_slice(&version.to_le_bytes());
    b.extend_from_slice(&tensors.to_le_bytes());
    b.extend_from_slice(&kv.to_le_bytes());
    b.extend_from_slice(rest);
    b
}

fn error_of(bytes: Vec<u8>) -> String {
    Gguf::parse(path(), bytes).unwrap_err().to_string()
}

#[test]
fn damaged_files_give_errors_naming_the_problem() {
    let e = error_of(b"GGML\x03\0\0\0".to_vec());
    assert!(e.contains("m.gguf") && e.contains("magic"), "{e}");
    assert!(error_of(header(1, 0, 0, &[])).contains("version"));
    let e = error_of(header(3, u64::MAX, 0, &[]));
    assert!(e.contains("tensor count"), "{e}");
    let e = error_of(header(3, 0, 1 << 40, &[]));
    assert!(e.contains("metadata count"), "{e}");
    // A key, then value type 13.
    let mut kv = Vec::new();
    put_string(&mut kv, "k");
    kv.extend_from_slice(&13u32.to_le_bytes());
    assert!(error_of(header(3, 0, 1, &kv)).contains("value type 13"));
    // A bool of 2, an array of arrays, invalid UTF-8.
    let mut kv = Vec::new();
    put_string(&mut kv, "flag");
    kv.extend_from_slice(&7u32.to_le_bytes());
    kv.push(2);
    assert!(error_of(header(3, 0, 1, &kv)).contains("bool byte 2"));
    let mut kv = Vec::new();
    put_string(&mut kv, "nested");
    kv.extend_from_slice(&9u32.to_le_bytes());
    kv.extend_from_slice(&9u32.to_le_bytes());
    kv.extend_from_slice(&1u64.to_le_bytes());
    assert!(error_of(header(3, 0, 1, &kv)).contains("array of arrays"));
    let mut kv = 2u64.to_le_bytes().to_vec();
    kv.extend_from_slice(&[0xff, 0xfe]);
    kv.extend_from_slice(&[0; 12]);
    let e = error_of(header(3, 0, 1, &kv));
    assert!(e.contains("UTF-8") && e.contains("metadata key 0"), "{e}");
    // Tensor infos: unknown type, misaligned offset, duplicate name, data past the end.
    let tensor = |name: &str, ty: u32, offset: u64| {
        let mut t = Vec::new();
        put_string(&mut t, name);
        t.extend_from_slice(&1u32.to_le_bytes());
        t.extend_from_slice(&4u64.to_le_bytes());
        t.extend_from_slice(&ty.to_le_bytes());
        t.extend_from_slice(&offset.to_le_bytes());
        t
    };
    let e = error_of(header(3, 1, 0, &tensor("q4", 2, 0)));
    assert!(e.contains("q4") && e.contains("ggml type 2"), "{e}");
    assert!(error_of(header(3, 1, 0, &tensor("t", 0, 8))).contains("not a multiple"));
    let mut two = tensor("t", 0, 0);
    two.extend(tensor("t", 0, 32));
    assert!(error_of(header(3, 2, 0, &two)).contains("appears twice"));
    let e = error_of(header(3, 1, 0, &tensor("t", 0, 0)));
    assert!(e.contains("runs past the end"), "{e}");
    // Elements that are not whole blocks; what the writer refuses to write.
    let mut w = GgufWriter::new();
    assert!(w.tensor("t", &[100], GgmlType::TQ2_0, vec![0; 66]).is_err());
    assert!(encode_i2s(&[0; 100], 1.0).is_err() && encode_tq1_0(&[2; 256], f16::ONE).is_err());
    for (k, v) in [
        (ALIGNMENT_KEY, Value::U32(0)),
        (ALIGNMENT_KEY, Value::U64(64)),
        ("a", Value::Array(Vec::new())),
        ("a", Value::Array(vec![Value::U8(1), Value::I8(1)])),
    ] {
        let mut w = GgufWriter::new();
        w.metadata(k, v.clone());
        assert!(w.to_bytes().is_err(), "{k} = {v:?}");
    }
    let mut w = GgufWriter::new();
    w.metadata("k", Value::U8(1)).metadata("k", Value::U8(2));
    assert!(w.to_bytes().unwrap_err().to_string().contains("twice"));
}

/// Every truncation and random byte changes of a valid file: parsing and reading never panic.
#[test]
fn damaged_files_never_panic() {
    let (w, _, _) = sample_file();
    let good = w.to_bytes().unwrap();
    let read_all = |bytes: Vec<u8>| {
        if let Ok(f) = Gguf::parse(path(), bytes) {
            for t in f.tensors.clone() {
                let _ = f.floats(&t.name);
                let _ = f.ternary(&t.name);
            }
        }
    };
    for len in (0..good.len()).step_by(7) {
        read_all(good[..len].to_vec());
    }
    let mut rng = SplitMix64::new(11);
    for _ in 0..1500 {
        let mut bytes = good.clone();
        for _ in 0..1 + rng.next_u64() % 4 {
            let at = (rng.next_u64() % bytes.len() as u64) as usize;
            bytes[at] = rng.next_u64() as u8;
        }
        read_all(bytes);
    }
}

#[test]
fn the_writer_replaces_a_file_whole() {
    let dir = std::env::temp_dir().join(format!("hbit-gguf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("m.gguf");
    std::fs::write(&out, b"old").unwrap();
    let (w, codes, _) = sample_file();
    w.write(&out).unwrap();
    assert!(
        std::fs::read_dir(&dir).unwrap().count() == 1,
        "no temporary file left"
    );
    assert_eq!(
        Gguf::read(&out).unwrap().ternary("i2s").unwrap().codes,
        codes
    );
    let e = Gguf::read(&dir.join("absent.gguf"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("absent.gguf"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}
