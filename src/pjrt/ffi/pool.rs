//! A persistent helper thread pool for the kernels: a call splits its rows
//! into chunks that the calling thread and the helpers take in turn from a
//! shared counter.
//!
//! A kernel runs ~200 times per decoded token, tens of microseconds each,
//! so helpers are started once and wait for work by spinning for a short
//! while (consecutive calls of one program come within microseconds) and
//! then sleeping on a condition variable. A helper that has not picked a
//! call up by the time the caller has taken every chunk is cancelled (the
//! caller claims the call back), so a helper that the OS has not scheduled
//! never delays the caller; a helper that did pick it up is waited for.

use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long an idle helper spins before it sleeps.
const SPIN: Duration = Duration::from_micros(300);

/// One call's work: `chunks` pieces, each run by `run(chunk)`.
struct Job<'a> {
    next: AtomicUsize,
    chunks: usize,
    run: &'a (dyn Fn(usize) + Sync),
}

impl Job<'_> {
    /// Takes and runs chunks until none is left.
    fn drain(&self) {
        loop {
            let c = self.next.fetch_add(1, Ordering::Relaxed);
            if c >= self.chunks {
                return;
            }
            (self.run)(c);
        }
    }
}

/// One helper's mailbox. Calls are numbered; `posted`, `claimed` and
/// `done` hold the number of the last call posted, claimed (by the helper
/// or, cancelling it, by the caller) and finished by the helper.
struct Slot {
    job: AtomicPtr<Job<'static>>,
    posted: AtomicU64,
    claimed: AtomicU64,
    done: AtomicU64,
    sleeping: Mutex<bool>,
    wake: Condvar,
}

struct Pool {
    slots: Vec<&'static Slot>,
    /// Held by the one call using the helpers (others run alone).
    busy: Mutex<()>,
}

/// Helper threads: `XLAYER_CPU_KERNEL_THREADS - 1` if set (1 to 64,
/// checked when a CPU client is made: `super::check_environment`), else
/// one fewer than the CPU's available parallelism, at most 7. On the
/// shared 2-core machine of the measurements one helper made SmolLM2's
/// decoding faster at load 2 (85-99 vs 69-79 tok/s) and slower at load 6-7
/// (28-37 vs 45-60): its spinning takes the core other processes need.
fn helpers() -> usize {
    if let Some(n) = std::env::var(super::KERNEL_THREADS_VAR)
        .ok()
        .and_then(|v| super::parse_kernel_threads(&v).ok())
    {
        return n - 1;
    }
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 8)
        - 1
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let mut slots = Vec::new();
        for i in 0..helpers() {
            let slot: &'static Slot = Box::leak(Box::new(Slot {
                job: AtomicPtr::new(std::ptr::null_mut()),
                posted: AtomicU64::new(0),
                claimed: AtomicU64::new(0),
                done: AtomicU64::new(0),
                sleeping: Mutex::new(false),
                wake: Condvar::new(),
            }));
            let spawned = std::thread::Builder::new()
                .name(format!("xlayer-kernel-{i}"))
                .spawn(move || helper(slot));
            if spawned.is_ok() {
                slots.push(slot);
            }
        }
        Pool {
            slots,
            busy: Mutex::new(()),
        }
    })
}

fn helper(slot: &'static Slot) {
    let mut seen = 0u64;
    loop {
        let start = Instant::now();
        let mut spins = 0u32;
        let n = loop {
            let n = slot.posted.load(Ordering::Acquire);
            if n != seen {
                break n;
            }
            spins = spins.wrapping_add(1);
            if !spins.is_multiple_of(256) || start.elapsed() < SPIN {
                std::hint::spin_loop();
                continue;
            }
            let mut sleeping = slot.sleeping.lock().unwrap_or_else(|e| e.into_inner());
            *sleeping = true;
            while slot.posted.load(Ordering::Acquire) == seen {
                sleeping = slot.wake.wait(sleeping).unwrap_or_else(|e| e.into_inner());
            }
            *sleeping = false;
        };
        seen = n;
        if slot
            .claimed
            .compare_exchange(n - 1, n, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            let job = slot.job.load(Ordering::Acquire);
            // SAFETY: the caller that posted call `n` stored `job` before
            // `posted` (release/acquire) and, since this helper claimed the
            // call, waits for `done == n` before the job leaves its stack.
            unsafe { (*job).drain() };
            slot.done.store(n, Ordering::Release);
        }
    }
}

/// Runs `run(c)` for every `c` in `0..chunks`, on the calling thread and
/// the pool's helpers; returns when all are done.
pub(crate) fn for_each_chunk(chunks: usize, run: &(dyn Fn(usize) + Sync)) {
    let job = Job {
        next: AtomicUsize::new(0),
        chunks,
        run,
    };
    let p = pool();
    let guard = match p.busy.try_lock() {
        Ok(g) if chunks > 1 && !p.slots.is_empty() => g,
        _ => return job.drain(),
    };
    let ptr = (&job as *const Job<'_>).cast_mut().cast::<Job<'static>>();
    let mut numbers = Vec::with_capacity(p.slots.len());
    for slot in &p.slots {
        let n = slot.posted.load(Ordering::Relaxed) + 1;
        slot.job.store(ptr, Ordering::Relaxed);
        slot.posted.store(n, Ordering::Release);
        let sleeping = slot.sleeping.lock().unwrap_or_else(|e| e.into_inner());
        if *sleeping {
            slot.wake.notify_one();
        }
        numbers.push(n);
    }
    job.drain();
    for (slot, &n) in p.slots.iter().zip(&numbers) {
        let cancelled = slot
            .claimed
            .compare_exchange(n - 1, n, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if cancelled {
            continue;
        }
        let mut spins = 0u32;
        while slot.done.load(Ordering::Acquire) != n {
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(1024) {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
    }
    drop(guard);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_chunk_runs_once() {
        for chunks in [0, 1, 2, 7, 100] {
            let hits: Vec<AtomicUsize> = (0..chunks).map(|_| AtomicUsize::new(0)).collect();
            for _ in 0..50 {
                for_each_chunk(chunks, &|c| {
                    hits[c].fetch_add(1, Ordering::Relaxed);
                });
            }
            assert!(
                hits.iter().all(|h| h.load(Ordering::Relaxed) == 50),
                "{chunks} chunks"
            );
        }
    }
}
