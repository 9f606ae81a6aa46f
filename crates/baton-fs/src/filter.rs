//! Include/exclude patterns, with restic's conventions: a pattern without a
//! `/` matches a name at any depth; a pattern with a `/` matches a whole path
//! (anchored at `/` when it starts with one, else at any depth); `*` does not
//! cross `/`, `**` does. A pattern that matches a directory covers everything
//! below it.

use baton_repo::{RepoError, Result};
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use std::path::Path;

/// A compiled set of patterns.
#[derive(Clone, Default)]
pub struct PatternSet {
    names: Option<GlobSet>,
    paths: Option<GlobSet>,
}

impl PatternSet {
    pub fn new(patterns: &[String]) -> Result<Self> {
        Self::with_case(patterns, &[])
    }

    /// Patterns matched exactly, and `insensitive` ones matched without
    /// regard to case (`--iexclude`).
    pub fn with_case(patterns: &[String], insensitive: &[String]) -> Result<Self> {
        let mut names = GlobSetBuilder::new();
        let mut paths = GlobSetBuilder::new();
        let (mut has_names, mut has_paths) = (false, false);
        let all = patterns
            .iter()
            .map(|p| (p, false))
            .chain(insensitive.iter().map(|p| (p, true)));
        for (p, nocase) in all {
            let p = p.trim_end_matches('/');
            if p.is_empty() {
                continue;
            }
            let glob = |s: &str| {
                GlobBuilder::new(s)
                    .literal_separator(true)
                    .backslash_escape(true)
                    .case_insensitive(nocase)
                    .build()
                    .map_err(|e| RepoError::Invalid(format!("invalid pattern {p:?}: {e}")))
            };
            if p.contains('/') {
                let anchored = if p.starts_with('/') {
                    p.to_string()
                } else {
                    format!("**/{p}")
                };
                paths.add(glob(&anchored)?);
                has_paths = true;
            } else {
                names.add(glob(p)?);
                has_names = true;
            }
        }
        let build = |b: GlobSetBuilder| b.build().map_err(|e| RepoError::Invalid(e.to_string()));
        Ok(PatternSet {
            names: if has_names { Some(build(names)?) } else { None },
            paths: if has_paths { Some(build(paths)?) } else { None },
        })
    }

    /// Reads patterns from files (one per line; blank lines and `#` comments skipped).
    pub fn read_files(files: &[impl AsRef<Path>]) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for f in files {
            let text =
                std::fs::read_to_string(f.as_ref()).map_err(|e| RepoError::io(f.as_ref(), e))?;
            out.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(String::from),
            );
        }
        Ok(out)
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_none() && self.paths.is_none()
    }

    /// Whether the absolute path `path` (whose last component is its name) matches.
    pub fn matches(&self, path: &Path) -> bool {
        if let Some(n) = &self.names
            && let Some(name) = path.file_name()
            && n.is_match(Path::new(name))
        {
            return true;
        }
        self.paths.as_ref().is_some_and(|p| p.is_match(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(p: &[&str]) -> PatternSet {
        PatternSet::new(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn restic_conventions() {
        let s = set(&["*.log", "/srv/cache", "tmp/x*"]);
        assert!(s.matches(Path::new("/a/b/c.log")));
        assert!(!s.matches(Path::new("/a/b/c.logs")));
        assert!(s.matches(Path::new("/srv/cache")));
        assert!(!s.matches(Path::new("/x/srv/cache")));
        assert!(s.matches(Path::new("/home/u/tmp/xyz")));
        assert!(!s.matches(Path::new("/home/u/tmp/a/xyz")));
        assert!(set(&[]).is_empty());
        let i = PatternSet::with_case(&[], &["*.LOG".to_string()]).unwrap();
        assert!(i.matches(Path::new("/a/b.log")) && i.matches(Path::new("/a/B.Log")));
        assert!(PatternSet::new(&["a[".to_string()]).is_err());
    }
}
