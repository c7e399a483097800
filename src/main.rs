//! The `carebridge` binary: a thin entry point over [`carebridge::cli`].

/// mimalloc instead of glibc malloc: the daemon allocates many small, short-lived buffers per
/// message across threads (HTTP bodies, envelopes, JSON), where glibc's `_int_malloc` and
/// `malloc_consolidate` showed up as the tokio workers' top symbols (issue #7). Built with
/// `no_thp` (workspace Cargo.toml): with transparent huge pages the idle RSS was 67 MB, not 17.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    carebridge::cli::main()
}
