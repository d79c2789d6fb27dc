//! The Supervisor's heap: what a config parse or the start-up allocates for a while must not
//! stay resident for the Supervisor's lifetime.
//!
//! Parsing a config of 1000 nodes builds a `toml_edit` document of several MB, of which less
//! than a third outlives the parse (the node specs). With one heap, the long-lived specs sit
//! among the freed parse tree and glibc cannot hand those pages back (a `malloc_trim` after an
//! in-place parse gave back a quarter of the peak). So the load runs on a short-lived thread,
//! which glibc serves from an arena of its own; the result is cloned on the calling thread
//! (into fresh, contiguous allocations of its exact size), the thread frees its own copy and
//! exits, and `malloc_trim(0)` returns the now wholly free arena's pages to the kernel.
//!
//! glibc raises its mmap and trim thresholds after a large block is freed (up to 32 MiB and
//! twice that), after which a freed multi-MB parse stays in the heap's top instead of going
//! back; [`fix_thresholds`] pins both at their defaults for the Supervisor.

use crate::config::Config;

/// What the loading thread hands over: its result, until it is copied.
type Loaded<E> = std::sync::Mutex<Option<Result<(Config, String), E>>>;

/// Runs `load` so that nothing it allocated, except a copy of its result, stays resident:
/// on a scoped thread (its own malloc arena), which hands its result over, waits while it is
/// copied here ([`Config::fresh_copy`]: no allocation of the thread's is kept), then frees it
/// itself (freed here, its small blocks would stay in this thread's malloc cache, keeping the
/// arena's pages resident; a thread's cache goes back to the arenas when it exits) and exits.
/// The heap is trimmed once the thread is joined. If no thread can be started, `load` runs
/// here (the result is the same; only the peak stays).
pub(super) fn off_heap<E: Send>(
    load: impl FnOnce() -> Result<(Config, String), E> + Send,
) -> Result<(Config, String), E> {
    use std::sync::mpsc::sync_channel;
    let mut load = Some(load);
    let loaded: Loaded<E> = std::sync::Mutex::new(None);
    let lock = || loaded.lock().unwrap_or_else(|p| p.into_inner());
    let (handed_tx, handed_rx) = sync_channel::<()>(1);
    let (copied_tx, copied_rx) = sync_channel::<()>(1);
    let out = std::thread::scope(|s| {
        let (to_run, lock) = (&mut load, &lock);
        let thread = std::thread::Builder::new()
            .name("config".into())
            .spawn_scoped(s, move || {
                let result = (to_run.take().expect("taken once"))();
                *lock() = Some(result);
                let _ = handed_tx.send(());
                let _ = copied_rx.recv();
                drop(lock().take());
                trim_own_arena();
            })
            .ok()?;
        let copy = match handed_rx.recv() {
            Ok(()) => {
                let mut slot = lock();
                match slot.take() {
                    Some(Ok(original)) => {
                        let copy = (original.0.fresh_copy(), original.1.clone());
                        *slot = Some(Ok(original));
                        Some(Ok(copy))
                    }
                    Some(Err(e)) => Some(Err(e)),
                    None => None,
                }
            }
            Err(_) => None,
        };
        let _ = copied_tx.send(());
        if let Err(panic) = thread.join() {
            std::panic::resume_unwind(panic);
        }
        copy
    });
    match out {
        Some(result) => {
            trim();
            result
        }
        None => (load.take().expect("not taken: no thread ran"))(),
    }
}

/// Gives back the free top of the calling thread's arena. glibc trims a thread arena's top
/// only in `free` of a block of 64 KiB or more (which first merges the small free blocks into
/// it); `malloc_trim` returns free pages inside an arena but not its top. A parse frees mostly
/// small blocks, so without this the freed tree could stay resident as the arena's top.
fn trim_own_arena() {
    let block: Vec<u8> = Vec::with_capacity(96 << 10);
    drop(std::hint::black_box(block));
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
