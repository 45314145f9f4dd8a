//! Read-only memory maps of model files: inference weights are used where the file lies, so a
//! model costs its file's bytes of page cache and nothing more.

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
