//! The process's allocator policy: glibc's malloc with one arena per core.
//!
//! glibc gives each thread that allocates an arena of its own, up to eight
//! per core, and keeps what is freed in each; a server whose tokio, blocking
//! pool and ONNX Runtime threads all allocate ends up holding several
//! partly-used arenas after a burst. One arena per core keeps contention as
//! low as the cores allow and the resident set smaller: over the soak
//! benchmark (`make soak`) it lowered idle RSS by about 10 % and peak RSS by
//! about 15 % against glibc's default, with the same throughput and p99.
//! A periodic `malloc_trim` when idle and an allocator crate were measured
//! too and did not pay (see docs/performance.md).
//!
//! It must not touch requests, sessions or settings.

/// Limits malloc to `cores` arenas, unless the operator chose a number
/// (`MALLOC_ARENA_MAX`, or glibc's tunables).
pub fn limit_arenas(cores: usize) {
    let chosen = std::env::var_os("MALLOC_ARENA_MAX").is_some()
        || std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("arena_max"));
    if chosen {
        return;
    }
    let arenas = i32::try_from(cores.max(1)).unwrap_or(i32::MAX);
    // SAFETY: mallopt only changes the allocator's own parameters; arenas
    // created before the call keep working.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, arenas) };
}
