//! The `transform:` chain entries of a policy (the seed's schema plus a wall-clock timeout).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

/// One WASM module in a chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformSpec {
    pub name: TransformName,
    pub image: ModuleImage,
    #[serde(default)]
    pub trigger: Trigger,
    /// Scalars are accepted and kept as strings; modules receive them verbatim.
    #[serde(
        default,
        deserialize_with = "de_args",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub args: BTreeMap<String, String>,
    #[serde(default)]
    pub resources: Resources,
    #[serde(default, skip_serializing_if = "Verification::is_empty")]
    pub verification: Verification,
    /// The module's output for a stored chunk depends only on that chunk: the host runs a
    /// fresh instance per stored chunk, so a read computes only the chunks it touches
    /// (on-read chains whose every entry says so; docs/POLICY.md).
    #[serde(default, skip_serializing_if = "is_false")]
    pub chunk_local: bool,
    /// The module's output is exactly as long as its input (per stored chunk when
    /// `chunk_local`): sizes are known before anything runs, and a chunk-local read is placed
    /// without computing earlier chunks. Checked: a module that breaks it fails the read.
    #[serde(default, skip_serializing_if = "is_false")]
    pub preserves_size: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A transform's name: shown in every error, so kept printable and short. View names follow
/// the same rule (they become path components under `/.space/views`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TransformName(pub String);

impl TryFrom<String> for TransformName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
        if ok {
            Ok(TransformName(s))
        } else {
            Err(format!(
                "transform name `{s}` must be 1-64 characters of letters, digits, `_`, `-` or `.`"
            ))
        }
    }
}

impl From<TransformName> for String {
    fn from(n: TransformName) -> String {
        n.0
    }
}

impl std::borrow::Borrow<str> for TransformName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for TransformName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TransformName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// When the chain runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum Trigger {
    /// decrypt → decompress → chain → reader. The stored bytes stay untransformed.
    #[default]
    #[serde(rename = "on-read")]
    OnRead,
    /// chain → chunk/compress/dedup → encrypt → persist. The stored bytes are the output.
    #[serde(rename = "on-write")]
    OnWrite,
}

/// Where a module's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum ModuleImage {
    /// `file:///abs/path.wasm`
    File(std::path::PathBuf),
    /// `capsule://<uuid>`
    CapsuleId(uuid::Uuid),
    /// `capsule://<path in the store>`
    CapsulePath(String),
}

impl TryFrom<String> for ModuleImage {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if let Some(rest) = s.strip_prefix("file://") {
            if !rest.starts_with('/') {
                return Err(format!(
                    "image `{s}`: file images need an absolute path (file:///abs/path.wasm)"
                ));
            }
            return Ok(ModuleImage::File(rest.into()));
        }
        if let Some(rest) = s.strip_prefix("capsule://") {
            if rest.is_empty() {
                return Err(format!("image `{s}`: capsule images need a UUID or a path"));
            }
            if let Ok(id) = uuid::Uuid::parse_str(rest) {
                return Ok(ModuleImage::CapsuleId(id));
            }
            return Ok(ModuleImage::CapsulePath(format!(
                "/{}",
                rest.trim_start_matches('/')
            )));
        }
        Err(format!(
            "image `{s}` must start with file:// or capsule:// (e.g. capsule://wasm/redact.wasm)"
        ))
    }
}

impl From<ModuleImage> for String {
    fn from(m: ModuleImage) -> String {
        m.to_string()
    }
}

impl fmt::Display for ModuleImage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModuleImage::File(p) => write!(f, "file://{}", p.display()),
            ModuleImage::CapsuleId(id) => write!(f, "capsule://{id}"),
            ModuleImage::CapsulePath(p) => write!(f, "capsule://{}", p.trim_start_matches('/')),
        }
    }
}

/// Sandbox limits; `None` means the runtime's default (see docs/ABI.md).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    #[serde(
        default,
        deserialize_with = "de_pages",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_memory_pages: Option<u32>,
    #[serde(
        default,
        deserialize_with = "de_positive",
        skip_serializing_if = "Option::is_none"
    )]
    pub fuel_limit: Option<u64>,
    /// Wall-clock deadline per module call, in milliseconds.
    #[serde(
        default,
        deserialize_with = "de_timeout",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout_ms: Option<u64>,
}

/// Trust checks done before a module is compiled.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Verification {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<Sha256Hex>,
    /// Hex ed25519 signature by a publisher key the store trusts.
    #[serde(
        default,
        deserialize_with = "de_signature",
        skip_serializing_if = "Option::is_none"
    )]
    pub signature: Option<String>,
}

impl Verification {
    fn is_empty(&self) -> bool {
        self.sha256.is_none() && self.signature.is_none()
    }
}

/// A lowercase hex SHA-256 digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Sha256Hex(pub String);

impl TryFrom<String> for Sha256Hex {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let t = s.trim().to_ascii_lowercase();
        if t.len() == 64 && t.chars().all(|c| c.is_ascii_hexdigit()) {
            Ok(Sha256Hex(t))
        } else {
            Err(format!("sha256 must be 64 hex digits, got `{s}`"))
        }
    }
}

impl From<Sha256Hex> for String {
    fn from(h: Sha256Hex) -> String {
        h.0
    }
}

/// A scalar argument value, kept as the string the module will see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgValue(pub String);

impl<'de> Deserialize<'de> for ArgValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        match serde_yaml::Value::deserialize(d)? {
            serde_yaml::Value::String(s) => Ok(ArgValue(s)),
            serde_yaml::Value::Number(n) => Ok(ArgValue(n.to_string())),
            serde_yaml::Value::Bool(b) => Ok(ArgValue(b.to_string())),
            other => Err(D::Error::custom(format!(
                "argument values must be strings, numbers or booleans, got {}",
                match other {
                    serde_yaml::Value::Null => "null",
                    serde_yaml::Value::Sequence(_) => "a list",
                    serde_yaml::Value::Mapping(_) => "a mapping",
                    _ => "a tagged value",
                }
            ))),
        }
    }
}

fn de_args<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    use serde::de::Error;
    let raw: BTreeMap<String, ArgValue> = BTreeMap::deserialize(d)?;
    let mut out = BTreeMap::new();
    for (k, v) in raw {
        // The ABI passes args as NUL-separated pairs, so NUL can't appear in either.
        if k.is_empty() || k.contains('\0') || v.0.contains('\0') {
            return Err(D::Error::custom(format!(
                "argument `{k}`: keys must be non-empty and neither may contain NUL"
            )));
        }
        out.insert(k, v.0);
    }
    Ok(out)
}

fn de_pages<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    use serde::de::Error;
    let v = u32::deserialize(d)?;
    if (1..=65536).contains(&v) {
        Ok(Some(v))
    } else {
        Err(D::Error::custom(format!(
            "max_memory_pages must be 1..=65536 (64 KiB pages), got {v}"
        )))
    }
}

fn de_positive<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    use serde::de::Error;
    let v = u64::deserialize(d)?;
    if v > 0 {
        Ok(Some(v))
    } else {
        Err(D::Error::custom("fuel_limit must be greater than 0"))
    }
}

fn de_timeout<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    use serde::de::Error;
    let v = u64::deserialize(d)?;
    if (1..=600_000).contains(&v) {
        Ok(Some(v))
    } else {
        Err(D::Error::custom(format!(
            "timeout_ms must be 1..=600000, got {v}"
        )))
    }
}

fn de_signature<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    use serde::de::Error;
    let s = String::deserialize(d)?;
    let t = s.trim().to_ascii_lowercase();
    if t.len() == 128 && t.chars().all(|c| c.is_ascii_hexdigit()) {
        Ok(Some(t))
    } else {
        Err(D::Error::custom(
            "signature must be 128 hex digits (an ed25519 signature)",
        ))
    }
}
