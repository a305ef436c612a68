//! The dataplane's and the controller's rooms import only downward, and no module
//! reaches itself back through others: read from the sources, so a new `use` that breaks either fails here with the
//! file and the path it names. `docs/architecture.md` gives the order and what each room
//! holds.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The dataplane's rooms, top first: a module may use its own room and the rooms after
/// it, never one before it.
const DATAPLANE: &[&str] = &[
    "proxy",
    "admin",
    "mcp",
    "pipeline",
    "provider",
    "error",
    "translate",
    "metering",
    "config",
    "auth",
    "base",
];

/// The controller's rooms, top first, under the same rule.
const CONTROLLER: &[&str] = &[
    "admin",
    "spend",
    "live",
    "k8s",
    "local",
    "xds",
    "publish",
    "status",
    "tracker",
    "auth",
    "listener",
    "tls",
    "session_key",
    "compile",
    "objects",
];

/// A module's path inside its crate, from its file (`a/b.rs` and `a/b/mod.rs` are `a::b`).
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap_or(file);
    let mut parts: Vec<String> = rel
        .with_extension("")
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            sources(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

/// The module paths a source names through `crate::`, `super::` or `self::`, made
/// absolute; `a::{b, c}` names `a::b` and `a::c` as well as `a`. Inline modules
/// (`mod tests { use super::*; }`) are followed, so `super` there is the file's module.
fn named_paths(module: &[String], text: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    // Inline modules open here, with the brace depth each opened at.
    let mut inline: Vec<(String, i64)> = Vec::new();
    let mut depth: i64 = 0;
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let here: Vec<String> = module
            .iter()
            .cloned()
            .chain(inline.iter().map(|(n, _)| n.clone()))
            .collect();
        let mut i = 0;
        while let Some(at) = ["crate::", "super::", "self::"]
            .iter()
            .filter_map(|p| code[i..].find(p).map(|k| i + k))
            .min()
        {
            let before = code[..at].chars().next_back();
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
                i = at + 1;
                continue;
            }
            let mut path = here.clone();
            let mut j = at;
            loop {
                let rest = &code[j..];
                if let Some(r) = rest.strip_prefix("crate::") {
                    path.clear();
                    j = code.len() - r.len();
                } else if let Some(r) = rest.strip_prefix("super::") {
                    path.pop();
                    j = code.len() - r.len();
                } else if let Some(r) = rest.strip_prefix("self::") {
                    j = code.len() - r.len();
                } else {
                    break;
                }
            }
            let tail: String = code[j..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            path.extend(
                tail.split("::")
                    .filter(|s| !s.is_empty())
                    .map(str::to_string),
            );
            out.push(path.clone());
            // One level of braces: `a::{b, c::D}`.
            let after = &code[j + tail.len()..];
            if let Some(inner) = after.strip_prefix('{') {
                let inner = &inner[..inner.find('}').unwrap_or(inner.len())];
                for item in inner.split(',') {
                    let item = item.trim().split("::").next().unwrap_or("").trim();
                    if !item.is_empty() && item != "self" {
                        let mut p = path.clone();
                        p.push(item.to_string());
                        out.push(p);
                    }
                }
            }
            i = j + tail.len().max(1);
        }
        let words: Vec<&str> = code.split_whitespace().collect();
        let opens = match words.as_slice() {
            ["mod", name, "{", ..] | ["pub", "mod", name, "{", ..] => Some(name.to_string()),
            _ => None,
        };
        if let Some(name) = opens {
            inline.push((name, depth));
        }
        depth += code.matches('{').count() as i64 - code.matches('}').count() as i64;
        while inline.last().is_some_and(|(_, d)| depth <= *d) {
            inline.pop();
        }
    }
    out
}

type Graph = BTreeMap<Vec<String>, (PathBuf, BTreeSet<Vec<String>>)>;

/// Every module of the crate at `src`, with the modules its sources name.
fn graph(src: &Path) -> std::io::Result<Graph> {
    let mut files = Vec::new();
    sources(src, &mut files)?;
    let modules: BTreeMap<Vec<String>, PathBuf> = files
        .iter()
        .filter(|f| f.file_name().is_some_and(|n| n != "main.rs"))
        .map(|f| (module_of(src, f), f.clone()))
        .collect();
    let known: BTreeSet<&Vec<String>> = modules.keys().collect();
    let mut out = BTreeMap::new();
    for (module, file) in &modules {
        let text = std::fs::read_to_string(file)?;
        let mut names = BTreeSet::new();
        for path in named_paths(module, &text) {
            // The longest prefix that is a module: `crate::a::b::Item` names `a::b`.
            let hit = (1..=path.len())
                .rev()
                .map(|n| path[..n].to_vec())
                .find(|p| known.contains(p));
            if let Some(target) = hit
                && &target != module
            {
                names.insert(target);
            }
        }
        out.insert(module.clone(), (file.clone(), names));
    }
    Ok(out)
}

fn room(module: &[String]) -> &str {
    module.first().map_or("", String::as_str)
}

/// Each module that names a module it also reaches back from, as `a -> b -> ... -> a`.
fn cycles(g: &Graph) -> Vec<String> {
    let mut found = Vec::new();
    for start in g.keys() {
        // Breadth first from `start`'s names, remembering the way, until `start` again.
        let mut way: BTreeMap<&Vec<String>, &Vec<String>> = BTreeMap::new();
        let mut queue: std::collections::VecDeque<&Vec<String>> = g[start].1.iter().collect();
        for n in &g[start].1 {
            way.insert(n, start);
        }
        while let Some(m) = queue.pop_front() {
            if m == start {
                let mut chain = vec![start.join("::")];
                let mut at = way[start];
                while at != start {
                    chain.push(at.join("::"));
                    at = way[at];
                }
                chain.push(start.join("::"));
                chain.reverse();
                found.push(chain.join(" -> "));
                break;
            }
            for n in g.get(m).map(|(_, ns)| ns.iter()).into_iter().flatten() {
                if !way.contains_key(n) {
                    way.insert(n, m);
                    queue.push_back(n);
                }
            }
        }
    }
    found
}

fn dataplane_src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../dataplane/src")
}

fn controller_src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../controller/src")
}

/// Every module of the crate at `src` is in a room of `order`, and every room has one.
fn in_rooms(src: &Path, order: &[&str]) -> std::io::Result<()> {
    let g = graph(src)?;
    let strays: Vec<String> = g
        .keys()
        .filter(|m| !m.is_empty() && !order.contains(&room(m)))
        .map(|m| m.join("::"))
        .collect();
    assert!(strays.is_empty(), "modules outside every room: {strays:?}");
    // The rooms named in the order exist, so a renamed room is noticed here.
    for r in order {
        assert!(g.keys().any(|m| room(m) == *r), "no module in room {r}");
    }
    Ok(())
}

/// The imports of the crate at `src` that reach a room above their own in `order`.
fn upward(src: &Path, order: &[&str]) -> std::io::Result<Vec<String>> {
    let g = graph(src)?;
    let rank = |r: &str| order.iter().position(|x| *x == r);
    let mut found = Vec::new();
    for (module, (file, names)) in &g {
        let Some(own) = rank(room(module)) else {
            continue;
        };
        // A test module may wire its room to the rooms above it: it is not code the
        // product runs, and nothing imports it.
        if module
            .last()
            .is_some_and(|m| m == "tests" || m.ends_with("_tests"))
        {
            continue;
        }
        for n in names {
            if let Some(theirs) = rank(room(n))
                && theirs < own
            {
                found.push(format!(
                    "{} ({}) names {} (room {})",
                    module.join("::"),
                    file.display(),
                    n.join("::"),
                    room(n)
                ));
            }
        }
    }
    Ok(found)
}

/// Both crates, with their rooms.
fn crates() -> [(PathBuf, &'static [&'static str]); 2] {
    [(dataplane_src(), DATAPLANE), (controller_src(), CONTROLLER)]
}

#[test]
fn every_module_is_in_a_room_of_the_documented_order() -> std::io::Result<()> {
    for (src, order) in crates() {
        in_rooms(&src, order)?;
    }
    Ok(())
}

#[test]
fn rooms_import_only_downward() -> std::io::Result<()> {
    for (src, order) in crates() {
        let found = upward(&src, order)?;
        assert!(
            found.is_empty(),
            "imports of a room above:\n{}",
            found.join("\n")
        );
    }
    Ok(())
}

#[test]
fn no_module_reaches_itself_back() -> std::io::Result<()> {
    for (src, _) in crates() {
        let found = cycles(&graph(&src)?);
        assert!(found.is_empty(), "import circles:\n{}", found.join("\n"));
    }
    Ok(())
}

#[test]
fn the_reader_sees_upward_imports_and_circles() -> std::io::Result<()> {
    // A small made-up crate: `low` names `high`, and `high::a` and `high::b` name each
    // other. The checks above are only as good as this reading.
    let dir = std::env::temp_dir().join(format!("tollgate-layers-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("high"))?;
    std::fs::create_dir_all(dir.join("low"))?;
    let write = |p: &str, t: &str| std::fs::write(dir.join(p), t);
    write("lib.rs", "pub mod high;\npub mod low;\n")?;
    write("high/mod.rs", "pub mod a;\npub mod b;\n")?;
    write(
        "high/a.rs",
        "use super::b::Thing;\nmod tests {\n    use super::*;\n    fn t() { let _ = format!(\"{}\", 1); }\n}\nuse super::super::low;\n",
    )?;
    write(
        "high/b.rs",
        "use crate::high::{a, self};\n// use crate::low::Nothing;\n",
    )?;
    write("low/mod.rs", "fn f() { crate::high::a::g(); }\n")?;
    let g = graph(&dir)?;
    let names = |m: &str| {
        let key: Vec<String> = m.split("::").map(str::to_string).collect();
        g[&key].1.iter().map(|n| n.join("::")).collect::<Vec<_>>()
    };
    assert_eq!(names("low"), ["high::a"]);
    assert_eq!(
        names("high::a"),
        ["high::b", "low"],
        "`super` in an inline module is the file's module"
    );
    assert_eq!(
        names("high::b"),
        ["high", "high::a"],
        "a comment names nothing"
    );
    let found = cycles(&g);
    assert!(
        found.iter().any(|c| c == "high::a -> high::b -> high::a"),
        "{found:?}"
    );
    std::fs::remove_dir_all(&dir)
}

#[test]
fn anyhow_is_only_in_the_binaries() -> std::io::Result<()> {
    // Library code says what went wrong with a typed error per module; `anyhow` is for
    // `main`, build tooling and tests.
    let mut files = Vec::new();
    for src in [dataplane_src(), controller_src()] {
        sources(&src, &mut files)?;
    }
    let mut found = Vec::new();
    for file in files {
        if file.file_name().is_some_and(|n| n == "main.rs")
            || file.components().any(|c| c.as_os_str() == "bin")
        {
            continue;
        }
        let text = std::fs::read_to_string(&file)?;
        if text
            .lines()
            .any(|l| !l.trim_start().starts_with("//") && l.contains("anyhow"))
        {
            found.push(file.display().to_string());
        }
    }
    assert!(found.is_empty(), "anyhow in library code: {found:?}");
    Ok(())
}

#[test]
fn no_dataplane_file_is_over_1000_lines_but_the_mcp_gateway() -> std::io::Result<()> {
    let src = dataplane_src();
    let mut files = Vec::new();
    sources(&src, &mut files)?;
    let mut long = Vec::new();
    for file in files {
        if file.ends_with("mcp/gateway.rs") {
            continue;
        }
        let lines = std::fs::read_to_string(&file)?.lines().count();
        if lines > 1000 {
            long.push(format!("{} ({lines} lines)", file.display()));
        }
    }
    assert!(long.is_empty(), "files to split: {long:?}");
    Ok(())
}

/// `text` with comments, strings and character literals blanked (newlines kept), so that
/// braces and keywords left are code.
fn code_only(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    let blank = |out: &mut Vec<u8>, c: u8| out.push(if c == b'\n' { b'\n' } else { b' ' });
    while i < b.len() {
        let rest = &b[i..];
        let end = if rest.starts_with(b"//") {
            rest.iter().position(|&c| c == b'\n').unwrap_or(rest.len())
        } else if rest.starts_with(b"/*") {
            rest.windows(2)
                .position(|w| w == b"*/")
                .map_or(rest.len(), |p| p + 2)
        } else if rest[0] == b'r' && rest[1..].iter().find(|&&c| c != b'#') == Some(&b'"') {
            // A raw string (`r"..."`, `r#"..."#`), not a raw identifier (`r#type`).
            let hashes = rest[1..].iter().take_while(|&&c| c == b'#').count();
            let close: Vec<u8> = std::iter::once(b'"')
                .chain(std::iter::repeat_n(b'#', hashes))
                .collect();
            let open = 2 + hashes;
            rest[open..]
                .windows(close.len())
                .position(|w| w == close.as_slice())
                .map_or(rest.len(), |p| open + p + close.len())
        } else if rest[0] == b'"' {
            let mut j = 1;
            while j < rest.len() && rest[j] != b'"' {
                j += if rest[j] == b'\\' { 2 } else { 1 };
            }
            (j + 1).min(rest.len())
        } else if rest[0] == b'\'' && rest.len() > 3 && rest[1] == b'\\' {
            // An escaped character literal (`'\n'`, `'\''`, `'\u{7b}'`): it ends at the
            // first quote after the escaped character.
            rest[3..]
                .iter()
                .position(|&c| c == b'\'')
                .map_or(rest.len(), |p| p + 4)
        } else if rest[0] == b'\'' && rest.len() > 2 && rest[2] == b'\'' {
            // A character literal (`'{'`), not a lifetime.
            3
        } else {
            0
        };
        // An identifier ending in `r` (`for`, `ptr`) is not a raw string's prefix.
        let after_ident = i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_');
        if end == 0 || (rest[0] == b'r' && after_ident) {
            out.push(b[i]);
            i += 1;
        } else {
            for &c in &rest[..end] {
                blank(&mut out, c);
            }
            i += end;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Each function with a body in `text`: its name, first line and number of lines.
fn functions(text: &str) -> Vec<(String, usize, usize)> {
    let code = code_only(text);
    let b = code.as_bytes();
    let line_at = |at: usize| code[..at].bytes().filter(|&c| c == b'\n').count() + 1;
    let mut found = Vec::new();
    let mut at = 0;
    while let Some(p) = code[at..].find("fn ") {
        let start = at + p;
        at = start + 3;
        if start > 0 && (b[start - 1].is_ascii_alphanumeric() || b[start - 1] == b'_') {
            continue;
        }
        let name: String = code[at..]
            .trim_start()
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if name.is_empty() {
            continue;
        }
        let Some(open) = code[at..].find(['{', ';']).map(|q| at + q) else {
            break;
        };
        if b[open] == b';' {
            continue;
        }
        let mut depth = 0usize;
        let mut close = open;
        for (q, &c) in b[open..].iter().enumerate() {
            match c {
                b'{' => depth += 1,
                b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        close = open + q;
                        break;
                    }
                }
                _ => {}
            }
        }
        found.push((name, line_at(start), line_at(close) - line_at(start) + 1));
    }
    found
}

#[test]
fn no_dataplane_function_is_over_150_lines() -> std::io::Result<()> {
    let mut files = Vec::new();
    sources(&dataplane_src(), &mut files)?;
    let mut long = Vec::new();
    for file in files {
        for (name, line, lines) in functions(&std::fs::read_to_string(&file)?) {
            if lines > 150 {
                long.push(format!("{}:{line} {name} ({lines} lines)", file.display()));
            }
        }
    }
    assert!(long.is_empty(), "functions to split: {long:?}");
    Ok(())
}

#[test]
fn the_function_reader_sees_through_strings_and_comments() {
    let text = "fn a() {\n    let s = \"}}\"; let t = p.r#type;\n    let c = '}'; let q = '\\''; let e = '\\u{7d}';\n    // }\n    let r = r#\"{\"#;\n}\nfn b<'x>(v: &'x str) -> &'x str {\n    v\n}\ntrait T { fn c(&self); }\nfn d(f: fn(u8) -> u8) {}\n";
    let f = functions(text);
    let got: Vec<(&str, usize, usize)> = f.iter().map(|(n, l, c)| (n.as_str(), *l, *c)).collect();
    assert_eq!(got, [("a", 1, 6), ("b", 7, 3), ("d", 11, 1)]);
}

/// A provider family is a folder under `provider/` (`provider/bedrock/`, ...).
#[test]
fn provider_families_never_reach_each_other() -> std::io::Result<()> {
    let src = dataplane_src();
    let g = graph(&src)?;
    let family = |m: &[String]| -> Option<String> {
        (m.len() >= 2 && m[0] == "provider" && src.join("provider").join(&m[1]).is_dir())
            .then(|| m[1].clone())
    };
    let families: BTreeSet<String> = g.keys().filter_map(|m| family(m)).collect();
    assert!(families.len() >= 4, "families: {families:?}");
    let mut found = Vec::new();
    for (module, (file, names)) in &g {
        let Some(own) = family(module) else {
            continue;
        };
        for n in names {
            // Its own folder, the shared Vertex AI path, and the rooms below.
            let allowed = n.first().is_some_and(|r| r != "provider")
                || family(n).as_ref() == Some(&own)
                || n.as_slice() == ["provider", "vertex"];
            if !allowed {
                found.push(format!("{}: {}", file.display(), n.join("::")));
            }
        }
    }
    assert!(
        found.is_empty(),
        "a provider family reaches outside its folder:\n{}",
        found.join("\n")
    );
    Ok(())
}
