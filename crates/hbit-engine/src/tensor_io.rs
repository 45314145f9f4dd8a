//! Tensor I/O shared by every reader of model files: safetensors float tensors decoded to f32,
//! and the NaN / infinity check each loader runs. A leaf: it imports nothing else of the engine.

use std::collections::HashMap;
use std::path::Path;

use half::{bf16, f16};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;

use crate::error::{EngineError, Result};

/// Tensors by name: shape and values (converted to f32).
pub type NamedTensors = HashMap<String, (Vec<usize>, Vec<f32>)>;

/// The values of a float tensor (F32, F16 or BF16) as f32; errors name `path` and `name`.
pub fn decode_floats(path: &Path, name: &str, view: &TensorView) -> Result<Vec<f32>> {
    let data = view.data();
    Ok(match view.dtype() {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        other => {
            return Err(EngineError::tensor(
                path,
                name,
                format!("expected dtype F32, F16 or BF16, found {other:?}"),
            ))
        }
    })
}

/// A float whose NaN / infinity test reads its bits (no conversion to f32: a load-time scan of a
/// 657 MB f16 embedding converted each value through a feature-detecting call).
pub trait Finite: Copy {
    fn is_finite_value(self) -> bool;
}

impl Finite for f32 {
    fn is_finite_value(self) -> bool {
        self.is_finite()
    }
}

impl Finite for f16 {
    fn is_finite_value(self) -> bool {
        // Infinite or NaN exactly when all five exponent bits are set.
        self.to_bits() & 0x7c00 != 0x7c00
    }
}

/// Refuses NaN or infinite values, naming `path`, `name` and the first bad index.
pub fn check_finite<T: Finite>(path: &Path, name: &str, values: &[T]) -> Result<()> {
    match hbit_kernels::scan::first_where(values, |v: T| !v.is_finite_value()) {
        None => Ok(()),
        Some(i) => Err(EngineError::tensor(
            path,
            name,
            format!("non-finite value at flat index {i}"),
        )),
    }
}

/// Every tensor of a safetensors file with its shape, as f32 (f32, f16 and bf16 accepted).
pub fn read_f32_tensors(path: &Path) -> Result<NamedTensors> {
    let bytes = std::fs::read(path).map_err(|e| EngineError::io(path, e))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| EngineError::format(path, format!("not a valid safetensors file ({e})")))?;
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        let values = decode_floats(path, &name, &view)?;
        out.insert(name, (view.shape().to_vec(), values));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_values_are_found_by_index_in_any_chunk() {
        let path = Path::new("m.hbit");
        for bad in [0usize, 16_383, 16_384, 39_999] {
            for poison in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                let mut v = vec![1.5f32; 40_000];
                v[bad] = poison;
                let e = check_finite(path, "t", &v).unwrap_err().to_string();
                assert!(
                    e.contains(&format!("flat index {bad}")) && e.contains("m.hbit"),
                    "{e}"
                );
                let h: Vec<f16> = v.iter().map(|&x| f16::from_f32(x)).collect();
                let e = check_finite(path, "t", &h).unwrap_err().to_string();
                assert!(e.contains(&format!("flat index {bad}")), "{e}");
            }
        }
        // The largest finite f16 and subnormals pass; values that overflow f16 do not.
        let h = [f16::MAX, f16::MIN, f16::from_bits(1), f16::from_f32(-0.0)];
        assert!(check_finite(path, "t", &h).is_ok());
        assert!(check_finite(path, "t", &[f16::from_f32(1e6)]).is_err());
        assert!(check_finite::<f32>(path, "t", &[]).is_ok());
    }
}
