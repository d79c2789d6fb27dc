//! The Supervisor's heap: what a config parse or the start-up allocates for a while must not
//! stay resident for the Supervisor's lifetime.
//!
//! Parsing a config of 1000 nodes builds a `toml_edit` document of several MB, of which less
//! than a third outlives the parse (the node specs). With one heap, the long-lived specs sit
//! among the freed parse tree and glibc cannot hand those pages back (a `malloc_trim` after an
//! in-place parse gave back a quarter of the peak). So the load runs on a short-lived thread,
//! which glibc serves from an arena of its own; the result is cloned on the calling thread
//! (into fresh, contiguous allocations of its exact size), the thread's copy is dropped (on a
//! thread too, see [`drop_elsewhere`]), and
//! `malloc_trim(0)` returns the now wholly free arena's pages to the kernel.
//!
//! glibc raises its mmap and trim thresholds after a large block is freed (up to 32 MiB and
//! twice that), after which a freed multi-MB parse stays in the heap's top instead of going
//! back; [`fix_thresholds`] pins both at their defaults for the Supervisor.

use crate::config::Config;

/// Runs `load` so that nothing it allocated, except a copy of its result, stays resident:
/// on a scoped thread (its own malloc arena), then copies the config and its text here
/// ([`Config::fresh_copy`]: no allocation of the thread's is kept) and trims the heap.
/// If no thread can be started, `load` runs here (the result is the same; only the peak stays).
pub(super) fn off_heap<E: Send>(
    load: impl FnOnce() -> Result<(Config, String), E> + Send,
) -> Result<(Config, String), E> {
    let mut load = Some(load);
    let ran = std::thread::scope(|s| {
        let spawned = std::thread::Builder::new()
            .name("config".into())
            .spawn_scoped(s, || (load.take().expect("taken once"))());
        spawned.ok().map(|h| h.join())
    });
    let result = match ran {
        Some(Ok(r)) => r,
        Some(Err(panic)) => std::panic::resume_unwind(panic),
        None => return (load.take().expect("not taken: no thread ran"))(),
    };
    let compact = result.map(|loaded| {
        let copy = (loaded.0.fresh_copy(), loaded.1.clone());
        drop_elsewhere(loaded);
        copy
    });
    trim();
    compact
}

/// Drops `value` on a short-lived thread: freed here, its small blocks would stay in this
/// thread's malloc cache (tcache), keeping the pages of the loading thread's arena resident; a
/// thread's cache is emptied into the arenas when it exits.
fn drop_elsewhere<T: Send>(value: T) {
    let mut value = Some(value);
    std::thread::scope(|s| {
        let _ = std::thread::Builder::new()
            .name("config".into())
            .spawn_scoped(s, || drop(value.take()));
    });
    drop(value);
}

/// Returns free heap pages (of every arena, including pages inside the heap) to the kernel.
pub(super) fn trim() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks glibc's own arenas; any pad value is valid.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Pins glibc's mmap threshold (and with it the trim threshold) at its default of 128 KiB:
/// blocks above it are mapped on their own and unmapped when freed, and a free top of a heap
/// above it is given back at once. Setting it turns off glibc's dynamic raising of both.
pub(super) fn fix_thresholds() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets glibc's malloc parameters; the values are in range.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 128 * 1024);
    }
}
