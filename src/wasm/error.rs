//! Errors raised while turning an image string into a ready-to-instantiate module.

use super::resolver::ResolveError;
use super::verify::VerifyError;

/// Why a module could not be loaded. Reported before any guest code runs.
#[derive(Debug, thiserror::Error)]
pub enum ModuleLoadError {
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    #[error(transparent)]
    Verify(#[from] VerifyError),
    /// Not valid WebAssembly (bad magic, truncated, fails validation, unsupported feature).
    #[error("module is not valid WebAssembly: {0}")]
    Invalid(String),
    /// Transform modules are pure functions of their input: no WASI, no host functions.
    #[error(
        "module imports `{module}`.`{field}`: transform modules may not import anything (no WASI, no host functions)"
    )]
    ForbiddenImport { module: String, field: String },
    #[error("module lacks required export `{name}` (expected {expected})")]
    MissingExport {
        name: &'static str,
        expected: &'static str,
    },
    #[error("export `{name}` has the wrong type: expected {expected}, found {found}")]
    MistypedExport {
        name: &'static str,
        expected: &'static str,
        found: String,
    },
    /// Host-side failure that is not the module's fault (e.g. instantiate_pre failed).
    #[error("engine error: {0}")]
    Engine(String),
}
