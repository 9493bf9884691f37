//! Transformed capsules through a real mount, with a Rust test double for the WASM engine:
//! on-read chains show transformed bytes at the normal path and stored bytes under
//! /.space/raw; on-write chains store transformed bytes; a failing transform fails only its
//! own reader.

mod fuse_common;

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

use fuse_common::*;
use space::pipeline::transform::{ModuleIdentity, TransformFailure};
use space::pipeline::{ChunkTransform, TransformError, TransformFactory};
use space::policy::{Policy, TransformSpec};
use space::space::{PutOptions, View};

/// `upper`: ASCII uppercase. `fail`: traps at its third piece. `double`: every byte twice.
struct TestFactory;

struct Chain {
    names: Vec<String>,
    pieces: u64,
}

impl ChunkTransform for Chain {
    fn process(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), TransformError> {
        let mut data = input.to_vec();
        for n in &self.names {
            data = match n.as_str() {
                "upper" => data.to_ascii_uppercase(),
                "double" => data.iter().flat_map(|b| [*b, *b]).collect(),
                "fail" if self.pieces >= 2 => {
                    return Err(TransformError::new(
                        "fail",
                        self.pieces,
                        TransformFailure::Trap("unreachable executed".into()),
                    ));
                }
                _ => data,
            };
        }
        self.pieces += 1;
        out.extend_from_slice(&data);
        Ok(())
    }

    fn finish(&mut self, _out: &mut Vec<u8>) -> Result<(), TransformError> {
        Ok(())
    }
}

impl TransformFactory for TestFactory {
    fn open_chain(
        &self,
        specs: &[TransformSpec],
    ) -> Result<Box<dyn ChunkTransform>, TransformError> {
        Ok(Box::new(Chain {
            names: specs.iter().map(|s| s.name.to_string()).collect(),
            pieces: 0,
        }))
    }

    /// The test chains are named built-ins: the name (and args) is their identity.
    fn identify(&self, specs: &[TransformSpec]) -> Result<Vec<ModuleIdentity>, TransformError> {
        Ok(specs
            .iter()
            .map(|s| ModuleIdentity {
                name: s.name.to_string(),
                sha256: format!("{:0>64}", hex_of(s.name.as_bytes())),
                args_sha256: format!("{:0>64}", hex_of(format!("{:?}", s.args).as_bytes())),
                publisher: None,
            })
            .collect())
    }
}

fn hex_of(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn policy(name: &str, trigger: &str) -> Policy {
    Policy::from_yaml(&format!(
        "transform:\n  - name: {name}\n    image: file:///test/{name}.wasm\n    trigger: {trigger}\n"
    ))
    .unwrap()
}

fn text(len: usize) -> Vec<u8> {
    let words = [&b"capsule "[..], b"space ", b"chunk\n", b"wasm "];
    let mut v = Vec::new();
    let mut i = 0usize;
    while v.len() < len {
        v.extend_from_slice(words[(i * 7 + i / 3) % 4]);
        i += 1;
    }
    v.truncate(len);
    v
}

#[test]
fn transformed_reads_writes_and_failures() {
    let s = scratch();
    let space = open(&s.store).with_transforms(Arc::new(TestFactory));
    let body = text(3 << 20);
    let put = |path: &str, p: Option<Policy>, data: &[u8]| {
        let opts = PutOptions {
            policy: p,
            parents: true,
            ..Default::default()
        };
        space.put(&mut &data[..], path, &opts, &|_| {}).unwrap();
    };
    put("/logs/app.log", Some(policy("upper", "on-read")), &body);
    put(
        "/logs/doubled",
        Some(policy("double", "on-read")),
        &body[..100_000],
    );
    put("/logs/broken", Some(policy("fail", "on-read")), &body);
    space
        .mkdir("/in", false, Some(&policy("upper", "on-write")))
        .unwrap();
    let Some(m) = mount_in_process(space, &s.mnt, Default::default()) else {
        return;
    };
    let mp = s.mnt.display().to_string();
    let t = s.tmp.path().display().to_string();

    // The normal path shows the chain's output; stat reports 0 until a read reached the end.
    let upper = body.to_ascii_uppercase();
    assert_eq!(
        std::fs::metadata(s.mnt.join("logs/app.log")).unwrap().len(),
        0
    );
    assert_eq!(std::fs::read(s.mnt.join("logs/app.log")).unwrap(), upper);
    std::fs::write(s.tmp.path().join("upper"), &upper).unwrap();
    for cmd in [
        format!("cat {mp}/logs/app.log | sha256sum"),
        format!("cp {mp}/logs/app.log {t}/copy && sha256sum < {t}/copy"),
        format!("sha256sum < {mp}/logs/app.log"),
    ] {
        assert_eq!(
            sh_out(&cmd),
            sh_out(&format!("sha256sum < {t}/upper")),
            "{cmd}"
        );
    }
    assert_eq!(
        sh_out(&format!("tail -c 1000 {mp}/logs/app.log")),
        String::from_utf8(upper[upper.len() - 1000..].to_vec()).unwrap()
    );
    if which("python3").is_some() {
        sh(&format!(
            "python3 -c \"import hashlib,sys; d=open('{mp}/logs/doubled','rb').read(); \
             assert len(d)==200000, len(d); assert d[0::2]==d[1::2]\""
        ));
    }
    // Once known, the transformed size is what stat shows.
    assert_eq!(
        std::fs::metadata(s.mnt.join("logs/app.log")).unwrap().len(),
        upper.len() as u64
    );
    // Stored bytes under /.space/raw, and the blocks of the stored size.
    assert_eq!(
        std::fs::read(s.mnt.join(".space/raw/logs/app.log")).unwrap(),
        body
    );
    assert_eq!(
        std::fs::metadata(s.mnt.join(".space/raw/logs/app.log"))
            .unwrap()
            .len(),
        body.len() as u64
    );

    // A transform that traps: EIO for that reader, while another reader streams on.
    let mut good = std::fs::File::open(s.mnt.join("logs/app.log")).unwrap();
    let mut first = vec![0u8; 1 << 20];
    good.read_exact(&mut first).unwrap();
    let err = std::fs::read(s.mnt.join("logs/broken")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    let mut rest = Vec::new();
    good.read_to_end(&mut rest).unwrap();
    first.extend_from_slice(&rest);
    assert_eq!(first, upper);
    let stats = std::fs::read_to_string(s.mnt.join(".space/stats")).unwrap();
    assert!(stats.contains("wasm_traps: 1"), "{stats}");

    // On-write: cp runs the chain and stores its output; a partial overwrite is refused.
    std::fs::write(s.tmp.path().join("report.csv"), b"a,b,c\nx,y,z\n").unwrap();
    sh(&format!("cp {t}/report.csv {mp}/in/"));
    let stored = std::fs::read(s.mnt.join(".space/raw/in/report.csv")).unwrap();
    assert_eq!(stored, b"A,B,C\nX,Y,Z\n");
    let o = std::process::Command::new("dd")
        .args([
            "if=/dev/zero",
            &format!("of={mp}/in/report.csv"),
            "bs=1",
            "count=1",
            "conv=notrunc",
        ])
        .output()
        .unwrap();
    assert!(
        !o.status.success(),
        "a partial overwrite of an on-write capsule must fail"
    );
    // Rewriting it whole (O_TRUNC) is fine.
    sh(&format!("printf 'q\\n' > {mp}/in/report.csv"));
    assert_eq!(
        std::fs::read(s.mnt.join(".space/raw/in/report.csv")).unwrap(),
        b"Q\n"
    );
    assert_eq!(
        std::fs::metadata(s.mnt.join("in/report.csv"))
            .unwrap()
            .size(),
        2
    );

    let fs = Arc::clone(&m.fs);
    drop(m);
    // After unmount, the store agrees.
    let n = fs.space.resolve("/in/report.csv").unwrap();
    assert_eq!(fs.space.read_all(&n, View::Raw).unwrap(), b"Q\n");
}
