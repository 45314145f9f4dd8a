//! Runtime CPU-feature dispatch: the best kernel path this CPU runs, picked once, with an
//! environment switch (`HBIT_KERNEL_PATH=scalar|avx2|avx512|neon`) that forces a lower path so
//! that every path can be tested on one machine.

use crate::error::KernelError;
use std::fmt;
use std::sync::OnceLock;

/// Name of the environment variable that forces a kernel path.
pub const KERNEL_PATH_ENV: &str = "HBIT_KERNEL_PATH";

/// A family of kernel implementations, ordered from slowest to fastest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KernelPath {
    /// Portable Rust, no intrinsics. The reference every other path must equal bit for bit.
    Scalar,
    /// AVX2 (256-bit integer SIMD, `vpmaddubsw` / `vpshufb`).
    Avx2,
    /// AVX-512 F+BW (512-bit), using VNNI `vpdpbusd` where the CPU has it.
    Avx512,
    /// AArch64 Advanced SIMD (128-bit): `smull`/`sadalp`, or `sdot` where the CPU has the
    /// dot-product extension, for the INT8 products; `tbl` for the INT4 lookups.
    Neon,
}

impl KernelPath {
    /// Every path; a CPU runs the scalar one and those of its own architecture.
    pub const ALL: [KernelPath; 4] = [
        KernelPath::Scalar,
        KernelPath::Avx2,
        KernelPath::Avx512,
        KernelPath::Neon,
    ];

    pub fn name(self) -> &'static str {
        match self {
            KernelPath::Scalar => "scalar",
            KernelPath::Avx2 => "avx2",
            KernelPath::Avx512 => "avx512",
            KernelPath::Neon => "neon",
        }
    }

    pub fn parse(name: &str) -> Option<KernelPath> {
        KernelPath::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(name.trim()))
    }

    /// Whether this CPU can run the path.
    pub fn is_supported(self) -> bool {
        match self {
            KernelPath::Scalar => true,
            KernelPath::Avx2 => cpu_has_avx2(),
            KernelPath::Avx512 => cpu_has_avx512(),
            KernelPath::Neon => cpu_has_neon(),
        }
    }

    /// A typed error unless this CPU can run the path.
    pub fn check_supported(self) -> Result<(), KernelError> {
        if self.is_supported() {
            Ok(())
        } else {
            Err(KernelError::BadKernelPath {
                value: self.name().to_string(),
                reason: format!("this CPU cannot run it; supported: {}", supported_names()),
            })
        }
    }

    /// Every path this CPU can run, slowest first.
    pub fn supported() -> Vec<KernelPath> {
        KernelPath::ALL
            .into_iter()
            .filter(|p| p.is_supported())
            .collect()
    }

    /// The fastest path this CPU runs, ignoring the environment.
    pub fn best() -> KernelPath {
        *KernelPath::supported()
            .last()
            .expect("the scalar path is always supported")
    }
}

impl fmt::Display for KernelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Whether the AVX-512 path may use VNNI (`vpdpbusd`).
pub fn cpu_has_avx512_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        cpu_has_avx512() && std::arch::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn cpu_has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn cpu_has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        cpu_has_avx2()
            && std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn cpu_has_neon() -> bool {
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("neon")
    }
    #[cfg(not(target_arch = "aarch64"))]
    {
        false
    }
}

/// Whether the NEON path may use the dot-product extension (`sdot`).
pub fn cpu_has_neon_dotprod() -> bool {
    #[cfg(target_arch = "aarch64")]
    {
        cpu_has_neon() && std::arch::is_aarch64_feature_detected!("dotprod")
    }
    #[cfg(not(target_arch = "aarch64"))]
    {
        false
    }
}

fn supported_names() -> String {
    KernelPath::supported()
        .iter()
        .map(|p| p.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Resolves the path from an optional override value (the environment variable's content).
pub fn resolve_path(override_value: Option<&str>) -> Result<KernelPath, KernelError> {
    let Some(value) = override_value else {
        return Ok(KernelPath::best());
    };
    let path = KernelPath::parse(value).ok_or_else(|| KernelError::BadKernelPath {
        value: value.to_string(),
        reason: "expected one of scalar, avx2, avx512, neon".to_string(),
    })?;
    if !path.is_supported() {
        return Err(KernelError::BadKernelPath {
            value: value.to_string(),
            reason: format!("this CPU cannot run it; supported: {}", supported_names()),
        });
    }
    Ok(path)
}

/// The path every kernel uses by default: the best this CPU runs, or the one
/// `HBIT_KERNEL_PATH` forces. Read once per process.
pub fn active_path() -> Result<KernelPath, KernelError> {
    static ACTIVE: OnceLock<Result<KernelPath, KernelError>> = OnceLock::new();
    ACTIVE
        .get_or_init(|| resolve_path(std::env::var(KERNEL_PATH_ENV).ok().as_deref()))
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for p in KernelPath::ALL {
            assert_eq!(KernelPath::parse(p.name()), Some(p));
        }
        assert_eq!(KernelPath::parse("AVX2"), Some(KernelPath::Avx2));
        assert_eq!(KernelPath::parse("sse"), None);
    }

    #[test]
    fn resolve_rejects_unknown_and_unsupported() {
        let err = resolve_path(Some("sve")).unwrap_err();
        assert!(matches!(err, KernelError::BadKernelPath { .. }));
        assert!(err.to_string().contains("sve"));
        assert_eq!(resolve_path(Some("scalar")), Ok(KernelPath::Scalar));
        assert_eq!(resolve_path(None), Ok(KernelPath::best()));
        for p in KernelPath::ALL {
            assert_eq!(resolve_path(Some(p.name())).is_ok(), p.is_supported());
        }
    }

    #[test]
    fn supported_is_ordered_and_starts_with_scalar() {
        let s = KernelPath::supported();
        assert_eq!(s[0], KernelPath::Scalar);
        assert!(s.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn each_architecture_runs_only_its_own_paths() {
        let x86 = cfg!(target_arch = "x86_64");
        let arm = cfg!(target_arch = "aarch64");
        assert!(!KernelPath::Avx2.is_supported() || x86);
        assert!(!KernelPath::Avx512.is_supported() || x86);
        // Advanced SIMD is part of every AArch64 CPU that runs Linux.
        assert_eq!(KernelPath::Neon.is_supported(), arm);
        assert!(!cpu_has_neon_dotprod() || arm);
    }
}
