//! `hbit cpu`: what this CPU is (its signature: vendor, family/model, the features the kernels
//! care about, cores, caches), its DRAM read bandwidth, and the kernel paths it runs. The
//! signature is read from the OS (`/proc/cpuinfo`, `/sys/devices/system/cpu`), so it needs no
//! `unsafe` CPUID here; elsewhere it reads as "unknown".

use anyhow::Result;
use clap::Args;
use hbit_kernels::cpu::{active_path, cpu_has_avx512_vnni, cpu_has_neon_dotprod, KernelPath};
use serde_json::json;

use crate::bench::membw::ColdBuffer;

#[derive(Args)]
pub struct CpuArgs {
    /// Print only the supported path names, one per line (for scripts).
    #[arg(long)]
    paths: bool,
    /// Skip the DRAM read-bandwidth measurement (a few seconds).
    #[arg(long)]
    no_bandwidth: bool,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// CPU features the kernels' choices depend on, as `/proc/cpuinfo` names them.
const FEATURES: [&str; 10] = [
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx512vbmi",
    "avx_vnni",
    "amx_tile",
    "amx_int8",
    "asimddp",
];

/// One cache of cpu0 as sysfs describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cache {
    pub level: u32,
    /// Data, Instruction or Unified.
    pub kind: String,
    pub bytes: usize,
}

/// What identifies a CPU for kernel choices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuSignature {
    pub vendor: String,
    pub family: String,
    pub model: String,
    pub model_name: String,
    /// The members of [`FEATURES`] this CPU has.
    pub features: Vec<String>,
    pub logical_cores: usize,
    pub caches: Vec<Cache>,
}

impl CpuSignature {
    /// This machine's signature.
    pub fn detect() -> CpuSignature {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let caches = read_caches(std::path::Path::new("/sys/devices/system/cpu/cpu0/cache"));
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        CpuSignature::from_cpuinfo(&cpuinfo, cores, caches)
    }

    /// The signature in `cpuinfo` (the text of `/proc/cpuinfo`; its first processor).
    pub fn from_cpuinfo(cpuinfo: &str, logical_cores: usize, caches: Vec<Cache>) -> CpuSignature {
        let first = cpuinfo.split("\n\n").next().unwrap_or_default();
        let field = |names: &[&str]| -> String {
            first
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| names.contains(&k.trim()))
                .map_or("unknown".to_string(), |(_, v)| v.trim().to_string())
        };
        let flags = field(&["flags", "Features"]);
        let have: Vec<&str> = flags.split_whitespace().collect();
        CpuSignature {
            vendor: field(&["vendor_id", "CPU implementer"]),
            family: field(&["cpu family", "CPU architecture"]),
            model: field(&["model", "CPU part"]),
            model_name: field(&["model name"]),
            features: FEATURES
                .iter()
                .filter(|f| have.contains(f))
                .map(|f| f.to_string())
                .collect(),
            logical_cores,
            caches,
        }
    }

    /// Largest cache, in bytes.
    pub fn last_level_cache_bytes(&self) -> Option<usize> {
        self.caches.iter().map(|c| c.bytes).max()
    }

    /// A short stable key: vendor, family, model, features, cores.
    pub fn key(&self) -> String {
        format!(
            "{}-f{}-m{}-{}c-{}",
            self.vendor,
            self.family,
            self.model,
            self.logical_cores,
            if self.features.is_empty() {
                "none".to_string()
            } else {
                self.features.join("+")
            }
        )
    }
}

/// A sysfs cache size (`32K`, `1M`, or bytes).
fn parse_size(text: &str) -> Option<usize> {
    let text = text.trim();
    let (num, mult) = match text.strip_suffix('K') {
        Some(n) => (n, 1024),
        None => match text.strip_suffix('M') {
            Some(n) => (n, 1024 * 1024),
            None => (text, 1),
        },
    };
    num.parse::<usize>().ok().map(|v| v * mult)
}

/// The caches under `dir` (`…/cpu0/cache`), in index order; none where it is unreadable.
pub fn read_caches(dir: &std::path::Path) -> Vec<Cache> {
    (0..16)
        .map(|i| dir.join(format!("index{i}")))
        .take_while(|index| index.is_dir())
        .filter_map(|index| {
            let read = |f: &str| std::fs::read_to_string(index.join(f)).ok();
            let size = read("size")?;
            Some(Cache {
                level: read("level")?.trim().parse().ok()?,
                kind: read("type")?.trim().to_string(),
                bytes: parse_size(&size)?,
            })
        })
        .collect()
}

/// DRAM read bandwidth in bytes/s: the best of 4 reads of a buffer 4× the last-level cache
/// (at least 256 MiB), with every core.
pub fn dram_read_bandwidth(signature: &CpuSignature) -> (usize, f64) {
    // cpu0's last-level cache may be one of several (one per CCD): 256 MiB at least.
    let bytes = signature
        .last_level_cache_bytes()
        .map_or(0, |b| 4 * b)
        .max(256 << 20);
    let buffer = ColdBuffer::new(bytes);
    (bytes, buffer.read_bandwidth(4))
}

/// `hbit cpu`.
pub fn cpu(args: &CpuArgs) -> Result<()> {
    let supported = KernelPath::supported();
    if args.paths {
        supported.iter().for_each(|p| println!("{p}"));
        return Ok(());
    }
    let sig = CpuSignature::detect();
    let bandwidth = (!args.no_bandwidth).then(|| dram_read_bandwidth(&sig));
    let names: Vec<&str> = supported.iter().map(|p| p.name()).collect();
    let active = active_path()?;
    if args.json {
        let caches: Vec<_> = sig
            .caches
            .iter()
            .map(|c| json!({"level": c.level, "type": c.kind, "bytes": c.bytes}))
            .collect();
        println!(
            "{}",
            json!({
                "signature": sig.key(), "vendor": sig.vendor, "family": sig.family,
                "model": sig.model, "model_name": sig.model_name, "features": sig.features,
                "logical_cores": sig.logical_cores, "caches": caches,
                "dram_read_buffer_bytes": bandwidth.map(|b| b.0),
                "dram_read_gb_per_s": bandwidth.map(|b| b.1 / 1e9),
                "supported_paths": names, "active_path": active.name(),
            })
        );
        return Ok(());
    }
    println!("CPU: {} ({})", sig.model_name, sig.key());
    let caches: Vec<String> = sig
        .caches
        .iter()
        .map(|c| format!("L{} {} {} KiB", c.level, c.kind, c.bytes / 1024))
        .collect();
    println!(
        "caches (per core or shared, as cpu0 sees them): {}",
        caches.join(", ")
    );
    if let Some((bytes, bw)) = bandwidth {
        println!(
            "DRAM read bandwidth: {:.1} GB/s ({} MiB buffer, {} threads, best of 4)",
            bw / 1e9,
            bytes >> 20,
            rayon::current_num_threads()
        );
    }
    println!("supported kernel paths: {}", names.join(", "));
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    if cfg!(target_arch = "aarch64") {
        println!("dot product (sdot): {}", yes_no(cpu_has_neon_dotprod()));
    } else {
        println!("AVX-512 VNNI: {}", yes_no(cpu_has_avx512_vnni()));
    }
    println!("active path: {active}");
    match crate::tune::current_profile() {
        Some(profile) => {
            println!(
                "kernel per call shape and batch bucket (tune profile, {} threads):",
                profile.threads
            );
            let mut timings = profile.timings.clone();
            timings.sort_by_key(|t| (t.bits, t.rows, t.cols, t.tokens));
            for t in timings {
                let line: Vec<String> = t
                    .seconds
                    .iter()
                    .map(|(layout, s)| format!("{layout} {:.1} µs", s * 1e6))
                    .collect();
                let fastest = t
                    .seconds
                    .iter()
                    .min_by(|a, b| a.1.total_cmp(b.1))
                    .map_or("?", |(l, _)| l.as_str());
                println!(
                    "  {} × {} ({}-bit input), batch {}: {fastest} ({})",
                    t.rows,
                    t.cols,
                    t.bits,
                    t.bucket,
                    line.join(", ")
                );
            }
            let pinned = profile.chosen_splits();
            if pinned.is_empty() {
                println!("thread splits: built-in everywhere (none measured faster)");
            } else {
                println!(
                    "thread splits pinned over the built-in ones (on {} threads):",
                    profile.threads
                );
                for (k, split) in pinned {
                    println!(
                        "  {} {} × {}, batch {}: {split}",
                        crate::tune::kind_name(k.kind),
                        k.rows,
                        k.cols,
                        k.bucket.name()
                    );
                }
            }
        }
        None => println!(
            "a4 layout: built-in ({}); `hbit tune --model M` measures this CPU",
            hbit_engine::Int4Layout::native().name()
        ),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ZEN4: &str =
        "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n\
model name\t: AMD EPYC 9R14 96-Core Processor\nflags\t\t: fpu sse avx2 fma avx512f avx512bw \
avx512vbmi avx512_vnni\n\nprocessor\t: 1\nvendor_id\t: GenuineIntel\n";

    #[test]
    fn signature_from_cpuinfo_takes_the_first_processor() {
        let caches = vec![
            Cache {
                level: 1,
                kind: "Data".into(),
                bytes: 32 << 10,
            },
            Cache {
                level: 3,
                kind: "Unified".into(),
                bytes: 32 << 20,
            },
        ];
        let sig = CpuSignature::from_cpuinfo(ZEN4, 2, caches);
        assert_eq!(sig.vendor, "AuthenticAMD");
        assert_eq!((sig.family.as_str(), sig.model.as_str()), ("25", "17"));
        assert_eq!(
            sig.features,
            [
                "avx2",
                "fma",
                "avx512f",
                "avx512bw",
                "avx512_vnni",
                "avx512vbmi"
            ]
        );
        assert_eq!(sig.last_level_cache_bytes(), Some(32 << 20));
        assert_eq!(
            sig.key(),
            "AuthenticAMD-f25-m17-2c-avx2+fma+avx512f+avx512bw+avx512_vnni+avx512vbmi"
        );
        // Nothing readable: every field says so instead of failing.
        let none = CpuSignature::from_cpuinfo("", 1, Vec::new());
        assert_eq!(none.vendor, "unknown");
        assert_eq!(none.key(), "unknown-funknown-munknown-1c-none");
    }

    /// AArch64 Linux names the fields differently (a Graviton 3, Neoverse V1, as its kernel
    /// writes them): implementer, architecture and part stand for vendor, family and model.
    #[test]
    fn signature_from_an_aarch64_cpuinfo() {
        let graviton3 = "processor\t: 0\nBogoMIPS\t: 2100.00\nFeatures\t: fp asimd evtstrm aes \
pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc dcpop sha3 sm3 sm4 \
asimddp sha512 sve asimdfhm\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x1\n\
CPU part\t: 0xd40\nCPU revision\t: 1\n\nprocessor\t: 1\n";
        let sig = CpuSignature::from_cpuinfo(graviton3, 2, Vec::new());
        assert_eq!(sig.vendor, "0x41");
        assert_eq!((sig.family.as_str(), sig.model.as_str()), ("8", "0xd40"));
        assert_eq!(sig.features, ["asimddp"]);
        assert_eq!(sig.key(), "0x41-f8-m0xd40-2c-asimddp");
    }

    #[test]
    fn caches_and_sizes_read_as_sysfs_writes_them() {
        assert_eq!(parse_size("48K\n"), Some(48 << 10));
        assert_eq!(parse_size("32M"), Some(32 << 20));
        assert_eq!(parse_size("512"), Some(512));
        assert_eq!(parse_size("lots"), None);
        let dir = std::env::temp_dir().join(format!("hbit-cpu-caches-{}", std::process::id()));
        for (i, (level, kind, size)) in [(1, "Data", "32K"), (2, "Unified", "1024K")]
            .iter()
            .enumerate()
        {
            let index = dir.join(format!("index{i}"));
            std::fs::create_dir_all(&index).unwrap();
            std::fs::write(index.join("level"), format!("{level}\n")).unwrap();
            std::fs::write(index.join("type"), format!("{kind}\n")).unwrap();
            std::fs::write(index.join("size"), format!("{size}\n")).unwrap();
        }
        let caches = read_caches(&dir);
        assert_eq!(caches.len(), 2);
        assert_eq!(caches[1].bytes, 1 << 20);
        assert_eq!(caches[1].kind, "Unified");
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(read_caches(&dir).is_empty());
    }
}
