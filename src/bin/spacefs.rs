//! `spacefs`: mounts a SPACE store as a filesystem (see `spacefs --help`, docs/SEMANTICS.md).

fn main() {
    space::util::bound_allocator();
    std::process::exit(space::fs::daemon::main());
}
