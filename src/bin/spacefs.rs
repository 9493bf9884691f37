//! `spacefs`: mounts a SPACE store as a filesystem (see `spacefs --help`, docs/SEMANTICS.md).

fn main() {
    std::process::exit(space::fs::daemon::main());
}
