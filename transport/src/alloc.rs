//! Allocator settings for the long-running binaries.
//!
//! A busy tunnel allocates and frees a buffer of up to 1 MiB per frame at
//! every hop (the batch read, the websocket payload, TLS records). With
//! glibc's defaults those sizes land near the mmap and trim thresholds, so freed pages go back
//! to the kernel and the next frame faults them in and clears them again:
//! about one page fault per 4 KiB relayed (docs/PERFORMANCE.md). Raising both
//! thresholds keeps the pages in the process.

/// Below this, allocations come from the heap instead of fresh mappings.
const MMAP_THRESHOLD: i32 = 4 << 20;
/// Free memory at the top of a heap is returned to the kernel only past this.
const TRIM_THRESHOLD: i32 = 128 << 20;

/// Call first in `main`, before any thread starts.
pub fn keep_freed_pages() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; it is called before
    // other threads exist, as glibc's documentation asks.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
    }
}
