//! The data path between the namespace and the store: write path (chunk, dedup, compress,
//! encrypt, persist) and read path (fetch, authenticate, decrypt, decompress, verify), with the
//! transform hook on each side. Knows nothing of FUSE or of the CLI.

pub mod chunk_codec;
pub mod read_path;
pub mod transform;
pub mod write_path;

pub use read_path::{CapsuleReader, ChunkCache, ReadOut};
pub use transform::{ChunkTransform, TransformError, TransformFactory};
pub use write_path::{WriteReport, write_stream};
