//! Image strings → module bytes.
//!
//! Accepted forms:
//! * `file:///abs/path.wasm` — an absolute path on the host (no host part, no relative paths:
//!   a policy must not depend on the daemon's working directory);
//! * `capsule://<UUID>` — a capsule by id (canonical 8-4-4-4-12 hex, case-insensitive);
//! * `capsule://<path>` — a capsule by its path in the store.
//!
//! Capsules are loaded through [`ModuleSource`], implemented by the store. The resolver never
//! interprets bytes; integrity is [`super::verify`]'s job and runs before compilation.

use std::io::Read;
use std::path::PathBuf;

/// A reference to a capsule holding a module.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CapsuleRef {
    /// Canonical lowercase hyphenated UUID, e.g. `123e4567-e89b-12d3-a456-426614174000`.
    Id(String),
    /// Store path as written after `capsule://` (never empty).
    Path(String),
}

impl std::fmt::Display for CapsuleRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CapsuleRef::Id(id) => write!(f, "capsule://{id}"),
            CapsuleRef::Path(p) => write!(f, "capsule://{p}"),
        }
    }
}

/// A parsed image string.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ImageRef {
    File(PathBuf),
    Capsule(CapsuleRef),
}

/// Where capsule-hosted modules come from. The store implements this.
pub trait ModuleSource: Send + Sync {
    /// Return the full contents of the referenced capsule.
    fn load_capsule(&self, reference: CapsuleRef) -> Result<Vec<u8>, SourceError>;
}

/// Failure reported by a [`ModuleSource`].
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("capsule {0} not found")]
    NotFound(CapsuleRef),
    #[error("cannot read capsule {reference}: {message}")]
    Other {
        reference: CapsuleRef,
        message: String,
    },
}

/// A [`ModuleSource`] with no capsules (for tools that only use `file://` images).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoCapsules;

impl ModuleSource for NoCapsules {
    fn load_capsule(&self, reference: CapsuleRef) -> Result<Vec<u8>, SourceError> {
        Err(SourceError::NotFound(reference))
    }
}

/// Why an image could not be resolved to bytes.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error(
        "unsupported image `{0}`: expected file:///absolute/path.wasm, capsule://<uuid> or capsule://<path>"
    )]
    UnsupportedScheme(String),
    #[error("image `{0}`: file paths must be absolute (file:///abs/path.wasm)")]
    RelativePath(String),
    #[error("image `{0}`: empty capsule reference")]
    EmptyCapsuleRef(String),
    #[error("image `{image}`: cannot read {path}: {message}")]
    Io {
        image: String,
        path: PathBuf,
        message: String,
    },
    #[error("image `{image}`: module is {len} bytes, limit is {limit}")]
    TooLarge { image: String, len: u64, limit: u64 },
    #[error("image `{image}`: {source}")]
    Source { image: String, source: SourceError },
}

/// Parse an image string (no I/O).
pub fn parse_image(image: &str) -> Result<ImageRef, ResolveError> {
    if let Some(rest) = image.strip_prefix("file://") {
        if !rest.starts_with('/') {
            return Err(ResolveError::RelativePath(image.to_string()));
        }
        return Ok(ImageRef::File(PathBuf::from(rest)));
    }
    if let Some(rest) = image.strip_prefix("capsule://") {
        if rest.is_empty() || rest == "/" {
            return Err(ResolveError::EmptyCapsuleRef(image.to_string()));
        }
        return Ok(ImageRef::Capsule(match parse_uuid(rest) {
            Some(id) => CapsuleRef::Id(id),
            None => CapsuleRef::Path(rest.to_string()),
        }));
    }
    Err(ResolveError::UnsupportedScheme(image.to_string()))
}

/// Canonicalise `s` if it is an 8-4-4-4-12 hex UUID.
fn parse_uuid(s: &str) -> Option<String> {
    let groups: Vec<&str> = s.split('-').collect();
    let lens = [8, 4, 4, 4, 12];
    if groups.len() != 5 {
        return None;
    }
    for (g, l) in groups.iter().zip(lens) {
        if g.len() != l || !g.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
    }
    Some(s.to_ascii_lowercase())
}

/// Resolve an image to module bytes, refusing anything larger than `max_bytes`.
pub fn resolve(
    image: &str,
    source: &dyn ModuleSource,
    max_bytes: usize,
) -> Result<Vec<u8>, ResolveError> {
    let too_large = |len: u64| ResolveError::TooLarge {
        image: image.to_string(),
        len,
        limit: max_bytes as u64,
    };
    match parse_image(image)? {
        ImageRef::File(path) => {
            let io = |e: std::io::Error| ResolveError::Io {
                image: image.to_string(),
                path: path.clone(),
                message: e.to_string(),
            };
            let file = std::fs::File::open(&path).map_err(io)?;
            let len = file.metadata().map_err(io)?.len();
            if len > max_bytes as u64 {
                return Err(too_large(len));
            }
            let mut bytes = Vec::with_capacity(len as usize);
            // `take` guards against a file growing between stat and read.
            file.take(max_bytes as u64 + 1)
                .read_to_end(&mut bytes)
                .map_err(io)?;
            if bytes.len() > max_bytes {
                return Err(too_large(bytes.len() as u64));
            }
            Ok(bytes)
        }
        ImageRef::Capsule(r) => {
            let bytes = source
                .load_capsule(r)
                .map_err(|source| ResolveError::Source {
                    image: image.to_string(),
                    source,
                })?;
            if bytes.len() > max_bytes {
                return Err(too_large(bytes.len() as u64));
            }
            Ok(bytes)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_forms() {
        assert_eq!(
            parse_image("file:///a/b.wasm").unwrap(),
            ImageRef::File("/a/b.wasm".into())
        );
        assert!(matches!(
            parse_image("file://a/b.wasm"),
            Err(ResolveError::RelativePath(_))
        ));
        assert!(matches!(
            parse_image("file://"),
            Err(ResolveError::RelativePath(_))
        ));
        assert!(matches!(
            parse_image("https://x/y.wasm"),
            Err(ResolveError::UnsupportedScheme(_))
        ));
        assert!(matches!(
            parse_image("/abs.wasm"),
            Err(ResolveError::UnsupportedScheme(_))
        ));
        assert!(matches!(
            parse_image("capsule://"),
            Err(ResolveError::EmptyCapsuleRef(_))
        ));
        assert_eq!(
            parse_image("capsule://123E4567-e89b-12d3-a456-426614174000").unwrap(),
            ImageRef::Capsule(CapsuleRef::Id(
                "123e4567-e89b-12d3-a456-426614174000".into()
            ))
        );
        assert_eq!(
            parse_image("capsule://mods/upper.wasm").unwrap(),
            ImageRef::Capsule(CapsuleRef::Path("mods/upper.wasm".into()))
        );
    }
}
