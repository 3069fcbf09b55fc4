//! The process-wide allocator of both services (declared in each `main.rs` with
//! [`jemalloc_allocator!`](crate::jemalloc_allocator)): jemalloc, configured to hand freed memory back to
//! the operating system soon after it is freed ([`MALLOC_CONF`]; the ingester declares options of
//! its own).
//!
//! It replaces `malloc` for the whole process (the `unprefixed_malloc_on_supported_platforms`
//! feature), so it also serves the C and C++ libraries linked in: librdkafka, and DuckDB's
//! allocations outside its buffer pool (the pool has DuckDB's own jemalloc and its
//! `memory_limit`).
//!
//! Why not glibc's malloc: in the embedded benchmark (`./dev bench --duration 60s --batch 1000
//! --concurrency 16 --set staging.memory_limit=64MiB`, 2 cores) glibc's heap grew to 144 MiB
//! holding 31-47 MiB of live allocations, and RSS peaked at 295-315 MiB. Moving only Rust's
//! allocations elsewhere does not help: DuckDB's C++ allocations alone left glibc's heap at
//! 80 MiB holding 6 MiB (with mimalloc for Rust, RSS peaked at 367 MiB). With jemalloc as
//! configured here it peaked at 269-293 MiB, at the same throughput. Operators can still override
//! any option with the `MALLOC_CONF` environment variable, which jemalloc reads after this.

/// jemalloc's options, read when it initialises (before `main`):
/// - `percpu_arena:percpu`: one arena per CPU, used by the threads running on it (jemalloc's
///   default is four per CPU, each keeping its own freed pages; 20-40 MiB more in the benchmark);
/// - `background_thread:true`: a jemalloc thread purges freed pages on time, also while the
///   process is idle (otherwise purging happens only inside later allocations);
/// - `dirty_decay_ms:250` (jemalloc's default is 10 s): freed pages go back to the OS within
///   about a quarter of a second; `muzzy_decay_ms:0`: released pages are unmapped at once.
///
/// Decays of 0 (purge on every free) cost a third of the throughput in the benchmark. At 1 s,
/// jemalloc held 40-90 MiB of freed pages beside 60-110 MiB in use while a Kafka-mode flush
/// ran beside the consumer; 250 ms lowered that run's sampled RSS (median, p90 and peak) by
/// 10-40 MiB at the same CPU per row
/// (`bench/compare/results/kafka-backlog-allocator-2026-12-07.md`).
pub const MALLOC_CONF: &std::ffi::CStr =
    c"percpu_arena:percpu,background_thread:true,dirty_decay_ms:250,muzzy_decay_ms:0";

/// Declares jemalloc as the process's allocator with [`MALLOC_CONF`], or with the options given
/// (a `&'static CStr` constant: a binary whose allocation pattern measured better otherwise, as
/// the ingester's); invoked once, in each binary's `main.rs` (a library never chooses the
/// allocator of whoever links it).
#[macro_export]
macro_rules! jemalloc_allocator {
    () => {
        $crate::jemalloc_allocator!($crate::allocator::MALLOC_CONF);
    };
    ($options:expr) => {
        #[global_allocator]
        static GLOBAL: $crate::allocator::Jemalloc = $crate::allocator::Jemalloc;

        /// The symbol jemalloc looks up for its compiled-in options (`malloc_conf(3)`), of the
        /// type `tikv-jemalloc-sys` declares it with.
        #[used]
        #[unsafe(export_name = "malloc_conf")]
        static JEMALLOC_OPTIONS: Option<&'static ::std::ffi::c_char> = Some(unsafe { &*$options.as_ptr() });
    };
}

pub use tikv_jemallocator::Jemalloc;

#[cfg(test)]
mod tests {
    use tikv_jemalloc_ctl::raw;

    crate::jemalloc_allocator!();

    #[test]
    fn jemalloc_serves_this_process_with_the_compiled_in_options() {
        // Reading the options through jemalloc's own control interface proves both that jemalloc
        // is the allocator in use and that it found `malloc_conf`.
        let background: bool = unsafe { raw::read(b"opt.background_thread\0") }.unwrap();
        let dirty_ms: isize = unsafe { raw::read(b"opt.dirty_decay_ms\0") }.unwrap();
        let muzzy_ms: isize = unsafe { raw::read(b"opt.muzzy_decay_ms\0") }.unwrap();
        let arenas = unsafe { raw::read_str(b"opt.percpu_arena\0") }.unwrap();
        assert!(background, "opt.background_thread");
        assert_eq!(arenas, b"percpu\0");
        assert_eq!((dirty_ms, muzzy_ms), (250, 0));
    }
}
