//! Capsule policies: the YAML schema users attach to capsules and directories, parsed strictly.
//!
//! Every value is validated while it is deserialized (newtypes with `try_from`), so serde_yaml
//! can attach the line and column of the offending value and `serde_path_to_error` the field
//! path. Unknown fields are rejected everywhere: a typo must never silently disable encryption.

mod size;
mod transform;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use size::ByteSize;
pub use transform::{
    ArgValue, ModuleImage, Resources, Sha256Hex, TransformName, TransformSpec, Trigger,
    Verification,
};

/// A policy that failed to parse or validate, with where in the YAML it went wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid policy{}: {message}", location_suffix(.line, .column, .field))]
pub struct PolicyError {
    pub message: String,
    /// 1-based line of the offending value, when the parser knows it.
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// Dotted path of the field, e.g. `transform[0].resources.fuel_limit`.
    pub field: Option<String>,
}

fn location_suffix(line: &Option<usize>, column: &Option<usize>, field: &Option<String>) -> String {
    let mut s = String::new();
    if let Some(f) = field {
        s.push_str(&format!(" in field `{f}`"));
    }
    if let Some(l) = line {
        s.push_str(&format!(" at line {l}"));
        if let Some(c) = column {
            s.push_str(&format!(", column {c}"));
        }
    }
    s
}

/// What a capsule's bytes go through: transforms, chunking, compression, dedup, encryption.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Ordered transform chain; output of entry i feeds entry i+1 (per trigger).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub transform: Vec<TransformSpec>,
    #[serde(default)]
    pub compression: Compression,
    /// Share identical chunks between and within capsules.
    #[serde(default = "default_true")]
    pub dedup: bool,
    /// AES-256-GCM on every stored chunk. Off stores plaintext (still integrity-checked).
    #[serde(default = "default_true")]
    pub encryption: bool,
    #[serde(default)]
    pub chunking: Chunking,
    /// Named views: extra on-read chains, each readable at `/.space/views/<name>/<path>` and
    /// with `spacectl get --view <name>` (docs/POLICY.md).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub views: BTreeMap<TransformName, Vec<TransformSpec>>,
    /// Keep the outputs of on-read chains and views in the store's derived-output cache.
    #[serde(default = "default_true", skip_serializing_if = "is_true")]
    pub cache: bool,
}

fn is_true(b: &bool) -> bool {
    *b
}

fn default_true() -> bool {
    true
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            transform: Vec::new(),
            compression: Compression::default(),
            dedup: true,
            encryption: true,
            chunking: Chunking::default(),
            views: BTreeMap::new(),
            cache: true,
        }
    }
}

impl Policy {
    /// Parses and validates policy YAML. An empty document is the default policy.
    pub fn from_yaml(text: &str) -> Result<Policy, PolicyError> {
        if text.trim().is_empty()
            || text
                .lines()
                .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
        {
            return Ok(Policy::default());
        }
        let de = serde_yaml::Deserializer::from_str(text);
        let policy: Policy = serde_path_to_error::deserialize(de).map_err(|e| {
            let field = e.path().to_string();
            let field = (field != "." && !field.is_empty()).then_some(field);
            let inner = e.into_inner();
            let message = strip_yaml_prefixes(&inner.to_string(), field.as_deref());
            let loc = inner.location();
            let mut line = loc.as_ref().map(|l| l.line());
            let mut column = loc.as_ref().map(|l| l.column());
            // serde_yaml reports value errors at the start of the enclosing mapping; move to
            // the line of the key itself when it can be found below that point.
            if let (Some(l), Some(key)) = (line, field.as_deref().and_then(last_key)) {
                if !message.starts_with("unknown field") {
                    if let Some((kl, kc)) = find_key_line(text, l, key) {
                        line = Some(kl);
                        column = Some(kc);
                    }
                }
            }
            PolicyError {
                message,
                line,
                column,
                field,
            }
        })?;
        policy.validate()?;
        Ok(policy)
    }

    /// Canonical YAML (what `policy show` prints and what the store keeps).
    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(self).expect("policy serializes")
    }

    /// Checks that need the whole policy (names unique within a chain; views read-only).
    fn validate(&self) -> Result<(), PolicyError> {
        let err = |message: String, field: String| PolicyError {
            message,
            line: None,
            column: None,
            field: Some(field),
        };
        let chains = std::iter::once(("transform".to_string(), &self.transform)).chain(
            self.views
                .iter()
                .map(|(name, chain)| (format!("views.{name}"), chain)),
        );
        for (field, chain) in chains {
            let mut seen = std::collections::HashSet::new();
            for (i, t) in chain.iter().enumerate() {
                if !seen.insert(&*t.name) {
                    return Err(err(
                        format!("duplicate transform name `{}`", t.name),
                        format!("{field}[{i}].name"),
                    ));
                }
                if field != "transform" && t.trigger != Trigger::OnRead {
                    return Err(err(
                        "a view is read through its chain; its transforms must be on-read".into(),
                        format!("{field}[{i}].trigger"),
                    ));
                }
            }
            if field != "transform" && chain.is_empty() {
                return Err(err(
                    "a view needs at least one transform (the raw bytes are at /.space/raw)".into(),
                    field,
                ));
            }
        }
        Ok(())
    }

    /// Whether a chain is applied chunk by chunk (every entry declares `chunk_local`).
    pub fn is_chunk_local(chain: &[TransformSpec]) -> bool {
        !chain.is_empty() && chain.iter().all(|t| t.chunk_local)
    }

    /// Whether a chain's output is as long as its input (every entry declares `preserves_size`).
    pub fn is_size_preserving(chain: &[TransformSpec]) -> bool {
        !chain.is_empty() && chain.iter().all(|t| t.preserves_size)
    }

    /// The chain a view applies: the on-read chain for the default view, else a named one.
    pub fn view_chain(&self, view: Option<&str>) -> Option<Vec<TransformSpec>> {
        match view {
            None => Some(self.on_read().cloned().collect()),
            Some(v) => self.views.get(v).cloned(),
        }
    }

    /// Transforms run when the capsule is read, in order.
    pub fn on_read(&self) -> impl Iterator<Item = &TransformSpec> {
        self.transform
            .iter()
            .filter(|t| t.trigger == Trigger::OnRead)
    }

    /// Transforms run when the capsule is written, in order.
    pub fn on_write(&self) -> impl Iterator<Item = &TransformSpec> {
        self.transform
            .iter()
            .filter(|t| t.trigger == Trigger::OnWrite)
    }
}

/// serde_yaml prefixes messages with its own path ("transform[0]: ") and appends
/// " at line L column C"; we report both separately.
fn strip_yaml_prefixes(msg: &str, field: Option<&str>) -> String {
    let mut m = match msg.rfind(" at line ") {
        Some(i) => &msg[..i],
        None => msg,
    };
    if let Some(i) = m.find(": ") {
        let prefix = &m[..i];
        if !prefix.contains(char::is_whitespace) && field.is_some_and(|f| f.starts_with(prefix)) {
            m = &m[i + 2..];
        }
    }
    m.to_string()
}

/// The last named key of a field path (`transform[0].resources.fuel_limit` → `fuel_limit`).
fn last_key(path: &str) -> Option<&str> {
    let last = path.rsplit('.').next()?;
    let key = last.split('[').next()?;
    (!key.is_empty()).then_some(key)
}

/// First line at or after `from` (1-based) whose key is `key`: returns (line, column).
fn find_key_line(text: &str, from: usize, key: &str) -> Option<(usize, usize)> {
    for (i, line) in text.lines().enumerate().skip(from.saturating_sub(1)) {
        let trimmed = line.trim_start();
        let body = trimmed
            .strip_prefix("- ")
            .map(str::trim_start)
            .unwrap_or(trimmed);
        let unquoted = body.trim_start_matches(['"', '\'']);
        if let Some(rest) = unquoted.strip_prefix(key) {
            if rest
                .trim_start_matches(['"', '\''])
                .trim_start()
                .starts_with(':')
            {
                return Some((i + 1, line.len() - body.len() + 1));
            }
        }
    }
    None
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CompressionAlgorithm {
    None,
    #[default]
    Zstd,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Compression {
    #[serde(default)]
    pub algorithm: CompressionAlgorithm,
    #[serde(default)]
    pub level: ZstdLevel,
}

impl Default for Compression {
    fn default() -> Self {
        Compression {
            algorithm: CompressionAlgorithm::Zstd,
            level: ZstdLevel::default(),
        }
    }
}

/// A zstd level; negative levels are zstd's fast modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "i32", into = "i32")]
pub struct ZstdLevel(pub i32);

impl Default for ZstdLevel {
    fn default() -> Self {
        ZstdLevel(3)
    }
}

impl TryFrom<i32> for ZstdLevel {
    type Error = String;
    fn try_from(v: i32) -> Result<Self, String> {
        if (-7..=22).contains(&v) && v != 0 {
            Ok(ZstdLevel(v))
        } else {
            Err(format!(
                "zstd level must be between -7 and 22 (not 0), got {v}"
            ))
        }
    }
}

impl From<ZstdLevel> for i32 {
    fn from(l: ZstdLevel) -> i32 {
        l.0
    }
}

/// Content-defined chunking bounds (FastCDC). Validated as a whole so min ≤ avg ≤ max holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawChunking")]
pub struct Chunking {
    pub min_size: ByteSize,
    pub avg_size: ByteSize,
    pub max_size: ByteSize,
}

impl Default for Chunking {
    fn default() -> Self {
        Chunking {
            min_size: ByteSize(64 * 1024),
            avg_size: ByteSize(256 * 1024),
            max_size: ByteSize(1024 * 1024),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawChunking {
    min_size: Option<ByteSize>,
    avg_size: Option<ByteSize>,
    max_size: Option<ByteSize>,
}

impl TryFrom<RawChunking> for Chunking {
    type Error = String;
    fn try_from(r: RawChunking) -> Result<Self, String> {
        let d = Chunking::default();
        let avg = r.avg_size.unwrap_or(d.avg_size);
        // Derive missing bounds from the average the way FastCDC suggests (avg/4, avg*4).
        let min = r.min_size.unwrap_or(ByteSize((avg.0 / 4).max(64)));
        let max = r
            .max_size
            .unwrap_or(ByteSize(avg.0.saturating_mul(4).min(16 << 20)));
        let c = Chunking {
            min_size: min,
            avg_size: avg,
            max_size: max,
        };
        c.check()?;
        Ok(c)
    }
}

impl Chunking {
    /// FastCDC 2020's accepted ranges, plus ordering.
    fn check(&self) -> Result<(), String> {
        let (min, avg, max) = (self.min_size.0, self.avg_size.0, self.max_size.0);
        if !(64..=1 << 20).contains(&min) {
            return Err(format!(
                "min_size must be between 64 B and 1 MiB, got {min}"
            ));
        }
        if !(256..=4 << 20).contains(&avg) {
            return Err(format!(
                "avg_size must be between 256 B and 4 MiB, got {avg}"
            ));
        }
        if !(1024..=16 << 20).contains(&max) {
            return Err(format!(
                "max_size must be between 1 KiB and 16 MiB, got {max}"
            ));
        }
        if !(min <= avg && avg <= max) {
            return Err(format!(
                "chunk sizes must satisfy min_size <= avg_size <= max_size, got {min} / {avg} / {max}"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_is_default() {
        assert_eq!(Policy::from_yaml("").unwrap(), Policy::default());
        assert_eq!(Policy::from_yaml("# nothing\n").unwrap(), Policy::default());
    }

    #[test]
    fn seed_example_parses() {
        let y = r#"
transform:
  - name: resize_1080p
    image: capsule://wasm-registry/resize.wasm
    trigger: on-read
    args:
      width: "1920"
      height: 1080
    resources:
      max_memory_pages: 16
      fuel_limit: 10000000
    verification:
      sha256: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
"#;
        let p = Policy::from_yaml(y).unwrap();
        assert_eq!(p.transform.len(), 1);
        let t = &p.transform[0];
        assert_eq!(t.trigger, Trigger::OnRead);
        assert_eq!(t.args["height"], "1080");
        assert_eq!(t.resources.max_memory_pages, Some(16));
        // Canonical YAML round-trips.
        assert_eq!(Policy::from_yaml(&p.to_yaml()).unwrap(), p);
    }

    #[test]
    fn unknown_field_names_field_and_line() {
        let y = "dedup: true\ntransform:\n  - name: a\n    image: file:///x.wasm\n    fuel: 3\n";
        let e = Policy::from_yaml(y).unwrap_err();
        assert!(e.message.contains("unknown field `fuel`"), "{e}");
        assert_eq!(e.line, Some(5), "{e}");
        assert!(
            e.field.as_deref().unwrap_or("").starts_with("transform[0]"),
            "{e}"
        );
    }

    #[test]
    fn bad_value_names_field_and_line() {
        let y = "transform:\n  - name: a\n    image: file:///x.wasm\n    resources:\n      fuel_limit: 0\n";
        let e = Policy::from_yaml(y).unwrap_err();
        assert_eq!(
            e.field.as_deref(),
            Some("transform[0].resources.fuel_limit"),
            "{e}"
        );
        assert_eq!(e.line, Some(5), "{e}");
        let msg = e.to_string();
        assert!(msg.contains("line 5"), "{msg}");
    }

    #[test]
    fn chunk_bounds_checked() {
        let e = Policy::from_yaml("chunking:\n  min_size: 1MiB\n  avg_size: 64KiB\n").unwrap_err();
        assert!(e.message.contains("min_size <= avg_size"), "{e}");
        let p = Policy::from_yaml("chunking:\n  avg_size: 64KiB\n").unwrap();
        assert_eq!(p.chunking.min_size.0, 16 * 1024);
        assert_eq!(p.chunking.max_size.0, 256 * 1024);
    }

    #[test]
    fn bad_image_and_trigger() {
        let e =
            Policy::from_yaml("transform:\n  - name: a\n    image: http://x/y.wasm\n").unwrap_err();
        assert_eq!(e.line, Some(3), "{e}");
        assert!(e.message.contains("image"), "{e}");
        let e = Policy::from_yaml(
            "transform:\n  - name: a\n    image: file:///a.wasm\n    trigger: sometimes\n",
        )
        .unwrap_err();
        assert_eq!(e.line, Some(4), "{e}");
    }

    #[test]
    fn duplicate_names_rejected() {
        let y = "transform:\n  - name: a\n    image: file:///a.wasm\n  - name: a\n    image: file:///b.wasm\n";
        let e = Policy::from_yaml(y).unwrap_err();
        assert!(e.message.contains("duplicate"), "{e}");
    }
}
