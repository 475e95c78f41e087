//! Paths into trees: a list of segments (`["Dense_0", "kernel"]`), shown
//! `/`-joined as Flax shows them (`Dense_0/kernel`), parsed from `/`- or
//! `.`-separated text (`encoder.layer.0`).

use std::fmt;

/// The path of a node in a [`super::Tree`]: map keys and tuple/list
/// positions, outermost first. The empty path is the root.
///
/// ```
/// use xlayer::builder::Path;
/// let p = Path::parse("encoder.layer").join(3).join("attention/self");
/// assert_eq!(p.to_string(), "encoder/layer/3/attention/self");
/// assert_eq!(p.segments(), ["encoder", "layer", "3", "attention", "self"]);
/// assert_eq!(p.joined("."), "encoder.layer.3.attention.self");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Path {
    segments: Vec<String>,
}

impl Path {
    /// The root (no segments).
    pub fn root() -> Path {
        Path::default()
    }

    /// Splits `text` on `/` and `.`; empty segments (`a//b`, a leading `/`)
    /// are dropped, so `""` and `"/"` are the root.
    pub fn parse(text: &str) -> Path {
        Path {
            segments: text
                .split(['/', '.'])
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
        }
    }

    /// A path of these segments, taken as they are (a segment may then hold
    /// `.`, as safetensors keys of other conventions do).
    pub fn from_segments<S: Into<String>>(segments: impl IntoIterator<Item = S>) -> Path {
        Path {
            segments: segments.into_iter().map(Into::into).collect(),
        }
    }

    /// The segments, outermost first.
    pub fn segments(&self) -> &[String] {
        &self.segments
    }

    /// Number of segments.
    pub fn len(&self) -> usize {
        self.segments.len()
    }

    /// True for the root.
    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// This path followed by `child` (parsed as [`Path::parse`] parses; a
    /// number is one segment: `join(3)`).
    pub fn join(&self, child: impl fmt::Display) -> Path {
        let mut p = self.clone();
        p.segments.extend(Path::parse(&child.to_string()).segments);
        p
    }

    /// This path followed by every segment of `other`.
    pub fn concat(&self, other: &Path) -> Path {
        let mut p = self.clone();
        p.segments.extend(other.segments.iter().cloned());
        p
    }

    /// The last segment (`None` for the root).
    pub fn name(&self) -> Option<&str> {
        self.segments.last().map(String::as_str)
    }

    /// The segments joined with `sep`.
    pub fn joined(&self, sep: &str) -> String {
        self.segments.join(sep)
    }

    /// Whether the last segments of this path are exactly those of `suffix`
    /// (whole segments: `a/my_kernel` does not end with `kernel`).
    pub fn ends_with(&self, suffix: &Path) -> bool {
        self.segments.ends_with(&suffix.segments)
    }

    /// Whether the first segments of this path are exactly those of `prefix`.
    pub fn starts_with(&self, prefix: &Path) -> bool {
        self.segments.starts_with(&prefix.segments)
    }

    /// Replaces every run of segments equal to `from` by the segments of
    /// `to`, left to right, without rescanning what was inserted
    /// (`Dense_1` renames `a/Dense_1/b` but not `a/Dense_10/b`).
    pub fn replace(&self, from: &Path, to: &Path) -> Path {
        let n = from.segments.len();
        if n == 0 {
            return self.clone();
        }
        let mut out = Vec::with_capacity(self.segments.len());
        let mut i = 0;
        while i < self.segments.len() {
            if self.segments[i..].starts_with(&from.segments) {
                out.extend(to.segments.iter().cloned());
                i += n;
            } else {
                out.push(self.segments[i].clone());
                i += 1;
            }
        }
        Path { segments: out }
    }
}

impl fmt::Display for Path {
    /// The segments joined with `/` (Flax's `Dense_0/kernel`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.segments.join("/"))
    }
}

impl From<&str> for Path {
    /// [`Path::parse`].
    fn from(text: &str) -> Path {
        Path::parse(text)
    }
}

impl From<&String> for Path {
    /// [`Path::parse`].
    fn from(text: &String) -> Path {
        Path::parse(text)
    }
}

impl From<String> for Path {
    /// [`Path::parse`].
    fn from(text: String) -> Path {
        Path::parse(&text)
    }
}

impl From<&Path> for Path {
    fn from(p: &Path) -> Path {
        p.clone()
    }
}

impl From<usize> for Path {
    /// One segment: a tuple or list position.
    fn from(i: usize) -> Path {
        Path {
            segments: vec![i.to_string()],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_display() {
        assert_eq!(Path::parse("a.b/c").segments(), ["a", "b", "c"]);
        assert!(Path::parse("/").is_empty());
        assert_eq!(Path::parse("/a//b/").to_string(), "a/b");
        assert_eq!(Path::from(7usize).to_string(), "7");
        assert_eq!(Path::root().join("x").join(0).name(), Some("0"));
    }

    #[test]
    fn whole_segments_only() {
        let p = Path::parse("model/Dense_10/kernel");
        assert_eq!(p.replace(&"Dense_1".into(), &"Linear".into()), p);
        let q = Path::parse("model/Dense_1/kernel");
        assert_eq!(
            q.replace(&"Dense_1".into(), &"lin.one".into()).to_string(),
            "model/lin/one/kernel"
        );
        assert!(!Path::parse("a/my_kernel").ends_with(&"kernel".into()));
        assert!(Path::parse("a/kernel").ends_with(&"kernel".into()));
        // Multi-segment patterns match runs, left to right, once.
        let r = Path::parse("a/b/a/b/c");
        assert_eq!(
            r.replace(&"a/b".into(), &"a/b/a".into()).to_string(),
            "a/b/a/a/b/a/c"
        );
    }
}
