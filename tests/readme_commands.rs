//! The README opens with the two commands a new user runs on a fresh clone: both must be
//! there and runnable as written (`scripts/demo.sh`, not `bash scripts/demo.sh`).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

#[test]
fn the_readmes_two_commands_are_executable_scripts() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let block = readme
        .split("```sh")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("README opens with a ```sh block");
    let commands: Vec<&str> = block
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(commands, ["scripts/demo.sh", "scripts/test.sh"], "{block}");
    for c in commands {
        let mode = std::fs::metadata(root.join(c))
            .unwrap()
            .permissions()
            .mode();
        assert!(mode & 0o111 != 0, "{c} is not executable (mode {mode:o})");
        let text = std::fs::read_to_string(root.join(c)).unwrap();
        assert!(text.starts_with("#!"), "{c} has no #! line");
    }
}
