//! Model files in memory: a read-only map of the file (weights used where the page cache holds
//! them, shared between processes) or a private read-only copy (faster to decode from).

use std::fs::File;
use std::io;

pub use memmap2::Mmap;

/// Maps `file` read-only.
pub fn map_read_only(file: &File) -> io::Result<Mmap> {
    // SAFETY: the map is read-only and private to this process's view of the file. The one hazard
    // is another process truncating or rewriting the file while it is mapped; hbit never writes a
    // model in place (writers create a temporary file and rename it over the old one, which leaves
    // this mapping's inode intact).
    unsafe { Mmap::map(file) }
}

/// Reads `file` into fresh private anonymous memory, read-only once filled, with transparent
/// huge pages asked for. Decode streams every weight once per token; on the development VM the
/// copy got huge pages (all 1.15 GB of the ≈2B model's file, per `/proc/PID/smaps`) while the
/// file map had 4 KiB pages, and decode ran 4–30% faster from the copy (ten comparisons)
/// (`hbit bench e2e --load read,map`, reports/bitnet-cpp-side-by-side.md). The advice is only
/// advice: where the kernel grants no huge pages, 4 KiB pages work the same, only slower. The
/// `hbit` binary's inference commands turn huge pages off for the whole process
/// (`allocator::no_transparent_huge_pages`, for the allocator's sake); on the Intel Xeon, read
/// and map then decoded alike (≈700M a4, two runs: 73.9 / 75.9 t/s read, 79.9 / 68.1 map).
pub fn read_into_memory(file: &File) -> io::Result<Mmap> {
    use std::io::Read;
    let len = usize::try_from(file.metadata()?.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file larger than memory"))?;
    let mut anon = memmap2::MmapMut::map_anon(len.max(1))?;
    let _ = anon.advise(memmap2::Advice::HugePage);
    let mut reader = file;
    reader.read_exact(&mut anon[..len])?;
    anon.make_read_only()
}
