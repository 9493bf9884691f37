//! Every example policy in examples/policies parses and survives a canonical round trip.

use space::policy::Policy;

#[test]
fn every_example_policy_parses() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/policies");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let p = Policy::from_yaml(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(
            Policy::from_yaml(&p.to_yaml()).unwrap(),
            p,
            "{}",
            path.display()
        );
        n += 1;
    }
    assert!(n >= 6, "expected the example policies, found {n}");
}
