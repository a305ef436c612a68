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

use std::sync::Arc;

use crate::compile::{Change, GroupInput};
use crate::objects::{SourceError, SourceObject};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

/// The files of one directory: what was read of each, and what is still to be read.
#[derive(Debug)]
pub struct LocalSource {
    dir: PathBuf,
    files: BTreeMap<PathBuf, Stamp>,
    /// Files to read again (their stamp when found changed) or, when `None`, removed:
    /// what the compiler has not taken yet.
    pending: BTreeMap<PathBuf, Option<Stamp>>,
}

impl LocalSource {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            files: BTreeMap::new(),
            pending: BTreeMap::new(),
        }
    }

    /// Looks for added, changed and removed files. Returns whether anything changed.
    pub fn scan(&mut self) -> std::io::Result<bool> {
        let mut found = BTreeMap::new();
        walk(&self.dir, &mut found)?;
        let mut changed = false;
        let pending = &mut self.pending;
        self.files.retain(|path, _| {
            let keep = found.contains_key(path);
            if !keep {
                changed = true;
                pending.insert(path.clone(), None);
            }
            keep
        });
        for (path, stamp) in found {
            if self.files.get(&path) != Some(&stamp) {
                changed = true;
                self.files.insert(path.clone(), stamp);
                self.pending.insert(path, Some(stamp));
            }
        }
        Ok(changed)
    }

    /// Up to `max_files` of the files added, changed or removed since they were last
    /// taken, read now: one group per file, named by its path under the directory. Taken
    /// a batch at a time, a large directory is never held parsed all at once (the
    /// compiler keeps only what it makes of each document). Empty when nothing is left.
    pub fn take_change(&mut self, max_files: usize) -> Change {
        let mut batch = Vec::new();
        let mut removed = Vec::new();
        while batch.len() < max_files
            && let Some((path, stamp)) = self.pending.pop_first()
        {
            match stamp {
                Some(stamp) => batch.push((path, stamp)),
                None => removed.push(path),
            }
        }
        let mut change = Change::default();
        for path in removed {
            change.groups.push((Arc::from(self.relative(&path)), None));
        }
        for (path, docs) in read_files(batch) {
            let rel = self.relative(&path);
            let input = group(&rel, docs);
            change.groups.push((Arc::from(rel), Some(input)));
        }
        change
    }

    fn relative(&self, path: &Path) -> String {
        path.strip_prefix(&self.dir)
            .unwrap_or(path)
            .display()
            .to_string()
    }
}

type Docs = Result<Vec<Arc<Value>>, String>;

/// The objects of one file, or why it is unreadable.
fn group(rel: &str, docs: Docs) -> GroupInput {
    let mut group = GroupInput::default();
    match docs {
        Ok(docs) => {
            for (i, doc) in docs.into_iter().enumerate() {
                group.objects.push(SourceObject {
                    origin: format!("{rel}#{}", i + 1),
                    value: doc,
                });
            }
        }
        Err(message) => group.errors.push(SourceError {
            origin: rel.to_string(),
            message,
        }),
    }
    group
}

/// Reads and parses `files`, on every core when there are many (a first read of a large
/// directory is mostly YAML parsing).
fn read_files(files: Vec<(PathBuf, Stamp)>) -> Vec<(PathBuf, Docs)> {
    let read = |(path, _): (PathBuf, Stamp)| {
        let docs = match std::fs::read_to_string(&path) {
            Ok(text) => parse_documents(&text).map(|docs| docs.into_iter().map(Arc::new).collect()),
            Err(e) => Err(e.to_string()),
        };
        (path, docs)
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if files.len() < 8 || threads < 2 {
        return files.into_iter().map(read).collect();
    }
    let per_thread = files.len().div_ceil(threads);
    let mut chunks: Vec<Vec<(PathBuf, Stamp)>> = Vec::new();
    let mut files = files.into_iter().peekable();
    while files.peek().is_some() {
        chunks.push(files.by_ref().take(per_thread).collect());
    }
    std::thread::scope(|scope| {
        let workers: Vec<_> = chunks
            .into_iter()
            .map(|chunk| scope.spawn(move || chunk.into_iter().map(read).collect::<Vec<_>>()))
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    })
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
        let change = src.take_change(usize::MAX);
        let groups: Vec<(&str, Vec<&str>)> = change
            .groups
            .iter()
            .map(|(g, input)| {
                let objects = input.as_ref().unwrap().objects.iter();
                (&**g, objects.map(|o| o.origin.as_str()).collect())
            })
            .collect();
        assert_eq!(
            groups,
            [
                ("a.yaml", vec!["a.yaml#1", "a.yaml#2"]),
                ("sub/c.yml", vec!["sub/c.yml#1"])
            ]
        );
        assert!(!src.scan().unwrap(), "nothing changed");
        assert!(src.take_change(usize::MAX).is_empty());
        std::fs::write(dir.path().join("a.yaml"), "kind: [broken\n").unwrap();
        assert!(src.scan().unwrap());
        let change = src.take_change(usize::MAX);
        assert_eq!(change.groups.len(), 1, "only the changed file");
        let input = change.groups[0].1.as_ref().unwrap();
        assert!(input.objects.is_empty());
        assert_eq!(input.errors.len(), 1);
        assert_eq!(input.errors[0].origin, "a.yaml");
        std::fs::remove_file(dir.path().join("a.yaml")).unwrap();
        assert!(src.scan().unwrap());
        let change = src.take_change(usize::MAX);
        assert_eq!(&*change.groups[0].0, "a.yaml");
        assert!(
            change.groups[0].1.is_none(),
            "a removed file removes its group"
        );
    }

    #[test]
    fn many_files_are_read_alike_on_every_core() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..40 {
            std::fs::write(
                dir.path().join(format!("f{i:02}.yaml")),
                format!("kind: K\nmetadata: {{name: n{i}}}\n---\nkind: L\n"),
            )
            .unwrap();
        }
        let mut src = LocalSource::new(dir.path());
        assert!(src.scan().unwrap());
        let change = src.take_change(usize::MAX);
        assert_eq!(change.groups.len(), 40);
        for (i, (g, input)) in change.groups.iter().enumerate() {
            assert_eq!(&**g, format!("f{i:02}.yaml"));
            let objects = &input.as_ref().unwrap().objects;
            assert_eq!(objects.len(), 2);
            assert_eq!(objects[0].value["metadata"]["name"], format!("n{i}"));
        }
    }
}
