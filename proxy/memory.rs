//! Secret bytes in memory: where they live, and what is left of them once they are gone.
//!
//! Three layers:
//! - [`LockedBuf`]: the buffer every token value and every header rendered from one lives in.
//!   It owns whole pages of its own, so locking them (`mlock`, `[hardening] mlock`) keeps them
//!   out of swap without pinning unrelated data, and unlocking one buffer can never unlock
//!   another's page. It is zeroized before it is freed.
//! - [`ZeroOnFree`]: a global allocator wrapper that zeroes every block as it is freed (and the
//!   old block of every reallocation). Bytes that carried a token through code sidekey does
//!   not own (hyper's read buffers, a JSON parser's strings, a header being encoded) are then
//!   not left behind in freed heap memory. The `sidekey` binary installs it; an embedding
//!   program may install it too.
//! - [`harden`]: `PR_SET_DUMPABLE=0` (no core dumps; no ptrace or `/proc/PID/mem` for other
//!   users) and the switch that makes new [`LockedBuf`]s lock their pages.

use std::alloc::{GlobalAlloc, Layout, System};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use zeroize::Zeroize;

const PAGE: usize = 4096;

static MLOCK: AtomicBool = AtomicBool::new(false);
static LOCK_FAILED: AtomicBool = AtomicBool::new(false);
static LOCKED_BYTES: AtomicUsize = AtomicUsize::new(0);

/// A page-aligned, zero-initialised buffer of a fixed length that owns its pages, locks them
/// when `[hardening] mlock` is on, and zeroizes them before freeing.
pub struct LockedBuf {
    ptr: NonNull<u8>,
    len: usize,
    locked: bool,
}

// SAFETY: LockedBuf owns its allocation exclusively, like a Box<[u8]>.
unsafe impl Send for LockedBuf {}
// SAFETY: shared access only reads through `&self`.
unsafe impl Sync for LockedBuf {}

impl LockedBuf {
    fn layout(len: usize) -> Layout {
        let size = len.max(1).div_ceil(PAGE) * PAGE;
        Layout::from_size_align(size, PAGE).expect("a page-aligned layout")
    }

    /// `len` zero bytes.
    pub fn zeroed(len: usize) -> LockedBuf {
        let layout = Self::layout(len);
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        let locked = MLOCK.load(Ordering::Relaxed) && lock(ptr.as_ptr(), layout.size());
        LockedBuf { ptr, len, locked }
    }

    /// A copy of `bytes`.
    pub fn copy_of(bytes: &[u8]) -> LockedBuf {
        let mut b = LockedBuf::zeroed(bytes.len());
        b.as_mut_slice().copy_from_slice(bytes);
        b
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is valid for len initialised bytes for as long as self lives.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and &mut self is exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl AsRef<[u8]> for LockedBuf {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl Drop for LockedBuf {
    fn drop(&mut self) {
        let layout = Self::layout(self.len);
        // SAFETY: the whole allocation is ours to write.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), layout.size()) }.zeroize();
        if self.locked {
            unlock(self.ptr.as_ptr(), layout.size());
        }
        // SAFETY: allocated in `zeroed` with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), layout) };
    }
}

#[cfg(target_os = "linux")]
fn lock(ptr: *mut u8, size: usize) -> bool {
    // SAFETY: the range is one allocation of ours, page-aligned.
    if unsafe { libc::mlock(ptr.cast(), size) } == 0 {
        LOCKED_BYTES.fetch_add(size, Ordering::Relaxed);
        return true;
    }
    let e = std::io::Error::last_os_error();
    if !LOCK_FAILED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            error = %e,
            "cannot lock token pages in memory (mlock); they may be swapped out. Raise RLIMIT_MEMLOCK \
             (ulimit -l) or grant CAP_IPC_LOCK, or set [hardening] mlock = false to silence this"
        );
    }
    false
}

#[cfg(target_os = "linux")]
fn unlock(ptr: *mut u8, size: usize) {
    // SAFETY: the range was locked by `lock` and is still ours.
    unsafe { libc::munlock(ptr.cast(), size) };
    LOCKED_BYTES.fetch_sub(size, Ordering::Relaxed);
}

#[cfg(not(target_os = "linux"))]
fn lock(_: *mut u8, _: usize) -> bool {
    false
}

#[cfg(not(target_os = "linux"))]
fn unlock(_: *mut u8, _: usize) {}

/// Bytes of token pages locked in memory now.
pub fn locked_bytes() -> usize {
    LOCKED_BYTES.load(Ordering::Relaxed)
}

/// Applies `[hardening]` to this process: `no_dump` makes it non-dumpable (Linux), `mlock`
/// makes every token buffer created from now on lock its pages. Returns what took effect.
pub fn harden(mlock: bool, no_dump: bool) -> Hardened {
    MLOCK.store(mlock && cfg!(target_os = "linux"), Ordering::Relaxed);
    let mut dump_off = false;
    #[cfg(target_os = "linux")]
    if no_dump {
        // SAFETY: prctl with PR_SET_DUMPABLE takes one integer argument.
        if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } == 0 {
            dump_off = true;
        } else {
            tracing::warn!(error = %std::io::Error::last_os_error(), "cannot turn off core dumps (PR_SET_DUMPABLE)");
        }
    }
    Hardened { no_dump: dump_off, mlock: MLOCK.load(Ordering::Relaxed) }
}

/// What [`harden`] turned on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hardened {
    pub no_dump: bool,
    pub mlock: bool,
}

/// A global allocator that zeroes every block before it goes back to the system allocator, so
/// freed heap memory holds no token bytes. A reallocation that fits the block malloc already
/// gave keeps it (zeroing what a shrink gives up); any other moves through a fresh block, and
/// the old one is zeroed too.
///
/// It wraps the system allocator (malloc).
///
/// ```ignore
/// #[global_allocator]
/// static ALLOC: sidekey::memory::ZeroOnFree = sidekey::memory::ZeroOnFree;
/// ```
pub struct ZeroOnFree;

// SAFETY: every method forwards to the system allocator with the same layouts; the extra work
// is writing zeroes into a block we still own before releasing it, and keeping a block in
// place when malloc says it is already large enough (any later free of it is a plain free).
unsafe impl GlobalAlloc for ZeroOnFree {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        System.alloc_zeroed(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        wipe(ptr, layout.size());
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // Within the block malloc already gave (a shrink, or growth into its slack): keep it,
        // zeroing what a shrink gives up. Only the system allocator's blocks can be asked.
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        if new_size <= libc::malloc_usable_size(ptr.cast()) {
            if new_size < layout.size() {
                wipe(ptr.add(new_size), layout.size() - new_size);
            }
            return ptr;
        }
        let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
        let new = System.alloc(new_layout);
        if !new.is_null() {
            std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
            wipe(ptr, layout.size());
            System.dealloc(ptr, layout);
        }
        new
    }
}

/// Zeroes `buf` in a way the compiler does not drop as a dead store.
pub fn wipe_slice(buf: &mut [u8]) {
    // SAFETY: the slice's bytes are its own.
    unsafe { wipe(buf.as_mut_ptr(), buf.len()) };
}

/// Zeroes the first `len` bytes of `buf`'s allocation, initialised or not (what reads left
/// there beyond its length), in a way the compiler does not drop as a dead store.
pub fn wipe_allocation(buf: &mut Vec<u8>, len: usize) {
    let len = len.min(buf.capacity());
    // SAFETY: `len` bytes are within the allocation, which `buf` owns.
    unsafe { wipe(buf.as_mut_ptr(), len) };
}

/// Zeroes `size` bytes at `ptr` in a way the compiler does not drop as a dead store.
unsafe fn wipe(ptr: *mut u8, size: usize) {
    std::ptr::write_bytes(ptr, 0, size);
    std::sync::atomic::compiler_fence(Ordering::SeqCst);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locked_buffers_own_whole_pages() {
        let a = LockedBuf::copy_of(b"abc");
        assert_eq!(a.as_slice(), b"abc");
        assert_eq!(a.as_slice().as_ptr() as usize % PAGE, 0);
        let empty = LockedBuf::zeroed(0);
        assert!(empty.is_empty());
        let big = LockedBuf::zeroed(PAGE + 1);
        assert_eq!(big.len(), PAGE + 1);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn hardening_locks_pages_and_turns_off_dumps() {
        let on = harden(true, true);
        assert!(on.no_dump);
        // SAFETY: a read-only prctl.
        assert_eq!(unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) }, 0);
        let before = locked_bytes();
        let b = LockedBuf::copy_of(b"locked");
        assert!(b.locked, "mlock of one page failed (RLIMIT_MEMLOCK {})", memlock_limit());
        assert!(locked_bytes() >= before + PAGE);
        drop(b);
        // Other tests may lock pages meanwhile; this one's page is unlocked.
        harden(false, true);
        assert!(!LockedBuf::copy_of(b"unlocked").locked);
    }

    #[cfg(target_os = "linux")]
    fn memlock_limit() -> String {
        std::fs::read_to_string("/proc/self/limits")
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("Max locked memory"))
            .unwrap_or("unknown")
            .to_owned()
    }

    #[test]
    fn zero_on_free_keeps_contents_across_realloc() {
        let a = ZeroOnFree;
        let layout = Layout::from_size_align(64, 8).unwrap();
        // SAFETY: plain alloc/realloc/dealloc with matching layouts. Freed memory cannot be
        // inspected safely here: tests/memory_scan.rs checks the zeroing on the real binary.
        unsafe {
            let p = a.alloc(layout);
            std::ptr::write_bytes(p, 0xAB, 64);
            let q = a.realloc(p, layout, 128);
            assert!(std::slice::from_raw_parts(q, 64).iter().all(|&b| b == 0xAB));
            wipe(q, 128);
            assert!(std::slice::from_raw_parts(q, 128).iter().all(|&b| b == 0));
            a.dealloc(q, Layout::from_size_align(128, 8).unwrap());
        }
    }
}
