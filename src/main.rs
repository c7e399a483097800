//! The `carebridge` binary: a thin entry point over [`carebridge::cli`].

fn main() -> std::process::ExitCode {
    carebridge::cli::main()
}
