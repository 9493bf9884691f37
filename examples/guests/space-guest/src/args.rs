//! Parser for the `configure` argument block.
//!
//! The host encodes a transform's arguments as `key\0value\0` pairs sorted by
//! key. NUL separators (rather than `=`/`,`) mean values may contain any
//! character except NUL without escaping, and sorting makes the encoding
//! canonical so the same policy always yields byte-identical input.

use std::fmt;

/// Transform arguments passed to [`crate::Transform::configure`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Args {
    pairs: Vec<(String, String)>,
}

impl Args {
    /// Decodes a `key\0value\0...` block.
    ///
    /// Strict on purpose: a malformed block means host and guest disagree on
    /// the ABI, and failing `configure` surfaces that immediately instead of
    /// silently running with partial arguments.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        if bytes.is_empty() {
            return Ok(Self::default());
        }
        let Some(body) = bytes.strip_suffix(&[0]) else {
            return Err("malformed arguments: block must end with a NUL".into());
        };
        let mut parts = body.split(|&b| b == 0);
        let mut pairs = Vec::new();
        while let Some(key) = parts.next() {
            let Some(value) = parts.next() else {
                return Err("malformed arguments: key without a value".into());
            };
            let key = std::str::from_utf8(key)
                .map_err(|_| "malformed arguments: key is not UTF-8".to_string())?;
            let value = std::str::from_utf8(value)
                .map_err(|_| format!("argument `{key}`: value is not UTF-8"))?;
            if key.is_empty() {
                return Err("malformed arguments: empty key".into());
            }
            if pairs.iter().any(|(k, _): &(String, String)| k == key) {
                return Err(format!("argument `{key}` given twice"));
            }
            pairs.push((key.to_string(), value.to_string()));
        }
        Ok(Self { pairs })
    }

    /// Encodes pairs the way the host does (sorted by key). Used by tests and
    /// by anyone writing a host; `parse(&encode(x))` round-trips.
    pub fn encode<K: AsRef<str>, V: AsRef<str>>(pairs: &[(K, V)]) -> Vec<u8> {
        let mut sorted: Vec<(&str, &str)> = pairs
            .iter()
            .map(|(k, v)| (k.as_ref(), v.as_ref()))
            .collect();
        sorted.sort_by(|a, b| a.0.cmp(b.0));
        let mut out = Vec::new();
        for (k, v) in sorted {
            out.extend_from_slice(k.as_bytes());
            out.push(0);
            out.extend_from_slice(v.as_bytes());
            out.push(0);
        }
        out
    }

    /// The value for `key`, if given.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The value for `key`, or an error naming the missing argument.
    pub fn require(&self, key: &str) -> Result<&str, String> {
        self.get(key)
            .ok_or_else(|| format!("missing required argument `{key}`"))
    }

    /// A boolean flag: absent means `false`; `true/false/1/0/yes/no/on/off`
    /// are accepted. Anything else is an error rather than a guess, so a typo
    /// like `invert=ture` is reported instead of silently meaning `false`.
    pub fn flag(&self, key: &str) -> Result<bool, String> {
        self.flag_or(key, false)
    }

    /// Like [`Args::flag`] but with an explicit value for an absent key, for
    /// features that are on unless turned off.
    pub fn flag_or(&self, key: &str, default: bool) -> Result<bool, String> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => match v.to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => Ok(true),
                "false" | "0" | "no" | "off" => Ok(false),
                _ => Err(format!(
                    "argument `{key}`: expected true or false, got `{v}`"
                )),
            },
        }
    }

    /// Rejects keys not in `known`, so misspelt arguments fail loudly at
    /// configure time instead of being ignored.
    pub fn allow_only(&self, known: &[&str]) -> Result<(), String> {
        match self
            .pairs
            .iter()
            .find(|(k, _)| !known.contains(&k.as_str()))
        {
            None => Ok(()),
            Some((k, _)) => Err(format!(
                "unknown argument `{k}` (accepted: {})",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )),
        }
    }

    /// All pairs, in the host's (sorted) order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    /// True when no arguments were given.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }
}

impl fmt::Display for Args {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (k, v)) in self.pairs.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{k}={v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_sorted() {
        let enc = Args::encode(&[("b", "2"), ("a", "x=y,z")]);
        assert_eq!(enc, b"a\0x=y,z\0b\x002\0");
        let args = Args::parse(&enc).unwrap();
        assert_eq!(args.get("a"), Some("x=y,z"));
        assert_eq!(args.get("b"), Some("2"));
        assert_eq!(args.get("c"), None);
        assert_eq!(args.len(), 2);
        assert_eq!(args.to_string(), "a=x=y,z b=2");
    }

    #[test]
    fn empty_block_and_empty_value() {
        assert!(Args::parse(b"").unwrap().is_empty());
        let args = Args::parse(b"k\0\0").unwrap();
        assert_eq!(args.get("k"), Some(""));
    }

    #[test]
    fn malformed_blocks_rejected() {
        assert!(Args::parse(b"k\0v").is_err());
        assert!(Args::parse(b"k\0").is_err());
        assert!(Args::parse(b"\0v\0").is_err());
        assert!(Args::parse(b"k\0v\0k\0w\0").is_err());
        assert!(Args::parse(b"k\0\xff\0").is_err());
    }

    #[test]
    fn flags_and_known_keys() {
        let args =
            Args::parse(&Args::encode(&[("x", "TRUE"), ("y", "0"), ("z", "maybe")])).unwrap();
        assert!(args.flag("x").unwrap());
        assert!(!args.flag("y").unwrap());
        assert!(!args.flag("missing").unwrap());
        assert!(args.flag_or("missing", true).unwrap());
        assert!(!args.flag_or("y", true).unwrap());
        assert!(args.flag("z").unwrap_err().contains("maybe"));
        assert!(args.allow_only(&["x", "y", "z"]).is_ok());
        assert!(args.allow_only(&["x", "y"]).unwrap_err().contains("`z`"));
        assert!(args.require("w").unwrap_err().contains("`w`"));
    }
}
