//! `spacectl`: manage a SPACE store (see `spacectl --help` and docs/CLI.md).

fn main() {
    std::process::exit(space::cli::main());
}
