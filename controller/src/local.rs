//! Local mode's source: every `.yaml`/`.yml`/`.json` file under a directory, re-read when
//! it changes. Changes are found by polling file metadata (modification time, size, inode)
//! a few times a second: it needs no platform notification API, works on every filesystem
//! (including bind mounts and ConfigMap volumes, whose atomic symlink swaps defeat some
//! notifiers), and costs one `stat` per file per poll.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Deserialize;
use serde_json::Value;

use crate::objects::{Inputs, SourceError, SourceObject};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

#[derive(Debug)]
struct FileState {
    stamp: Stamp,
    docs: Result<Vec<std::sync::Arc<Value>>, String>,
}

/// The files of one directory, parsed.
#[derive(Debug)]
pub struct LocalSource {
    dir: PathBuf,
    files: BTreeMap<PathBuf, FileState>,
}

impl LocalSource {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            files: BTreeMap::new(),
        }
    }

    /// Looks for added, changed and removed files; re-reads only what changed.
    /// Returns whether anything changed.
    pub fn scan(&mut self) -> std::io::Result<bool> {
        let mut found = BTreeMap::new();
        walk(&self.dir, &mut found)?;
        let mut changed = false;
        self.files.retain(|path, _| {
            let keep = found.contains_key(path);
            changed |= !keep;
            keep
        });
        for (path, stamp) in found {
            if self.files.get(&path).is_some_and(|f| f.stamp == stamp) {
                continue;
            }
            changed = true;
            let docs = match std::fs::read_to_string(&path) {
                Ok(text) => parse_documents(&text)
                    .map(|docs| docs.into_iter().map(std::sync::Arc::new).collect()),
                Err(e) => Err(e.to_string()),
            };
            self.files.insert(path, FileState { stamp, docs });
        }
        Ok(changed)
    }

    /// Every object of every file, with where it came from.
    pub fn inputs(&self) -> Inputs {
        let mut inputs = Inputs::default();
        for (path, state) in &self.files {
            let rel = path
                .strip_prefix(&self.dir)
                .unwrap_or(path)
                .display()
                .to_string();
            match &state.docs {
                Ok(docs) => {
                    for (i, doc) in docs.iter().enumerate() {
                        inputs.objects.push(SourceObject {
                            origin: format!("{rel}#{}", i + 1),
                            value: doc.clone(),
                        });
                    }
                }
                Err(message) => inputs.errors.push(SourceError {
                    origin: rel,
                    message: message.clone(),
                }),
            }
        }
        inputs
    }
}

fn walk(dir: &Path, out: &mut BTreeMap<PathBuf, Stamp>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        // Follow symlinks, as ConfigMap volumes are made of them.
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            walk(&path, out)?;
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        ) {
            out.insert(
                path,
                Stamp {
                    modified: meta.modified().ok(),
                    len: meta.len(),
                    inode: meta.ino(),
                },
            );
        }
    }
    Ok(())
}

/// Splits a multi-document YAML (or JSON) text into its non-empty documents. A `List`
/// (as `kubectl get -o yaml` writes) is unpacked into its items.
pub fn parse_documents(text: &str) -> Result<Vec<Value>, String> {
    let mut docs = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(doc).map_err(|e| format!("document {}: {e}", i + 1))?;
        match value {
            Value::Null => {}
            Value::Object(ref map)
                if map.get("kind").and_then(Value::as_str) == Some("List")
                    && map.get("items").is_some_and(Value::is_array) =>
            {
                if let Some(Value::Array(items)) = map.get("items") {
                    docs.extend(items.iter().cloned());
                }
            }
            Value::Object(_) => docs.push(value),
            _ => return Err(format!("document {}: not a mapping", i + 1)),
        }
    }
    Ok(docs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_document_files_and_lists() {
        let docs = parse_documents("a: 1\n---\n---\nkind: List\nitems:\n- b: 2\n- c: 3\n").unwrap();
        assert_eq!(docs.len(), 3);
        assert!(parse_documents("a: [1\n").is_err());
        assert!(parse_documents("- 1\n").is_err());
    }

    #[test]
    fn scan_sees_adds_changes_and_removals() {
        let dir = tempfile::tempdir().unwrap();
        let mut src = LocalSource::new(dir.path());
        assert!(!src.scan().unwrap());
        std::fs::write(dir.path().join("a.yaml"), "kind: A\n---\nkind: B\n").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/c.yml"), "kind: C\n").unwrap();
        assert!(src.scan().unwrap());
        let origins: Vec<_> = src.inputs().objects.into_iter().map(|o| o.origin).collect();
        assert_eq!(origins, ["a.yaml#1", "a.yaml#2", "sub/c.yml#1"]);
        assert!(!src.scan().unwrap(), "nothing changed");
        std::fs::write(dir.path().join("a.yaml"), "kind: [broken\n").unwrap();
        assert!(src.scan().unwrap());
        let inputs = src.inputs();
        assert_eq!(inputs.errors.len(), 1);
        assert_eq!(inputs.errors[0].origin, "a.yaml");
        std::fs::remove_file(dir.path().join("a.yaml")).unwrap();
        assert!(src.scan().unwrap());
        assert_eq!(src.inputs().objects.len(), 1);
    }
}
