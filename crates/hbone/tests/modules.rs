//! The crate's modules depend on each other in one direction only: no module cycles.
//!
//! Reads `src/**/*.rs`, builds the graph of which module uses which (from `crate::`, `super::`
//! and `self::` paths, and `use` of a child module), and fails naming every cycle. A re-export
//! (`pub use`, `pub(crate) use`) is not a use of its own: a path through it counts as a use of
//! the module that defines the item, so lib.rs and a `mod.rs` that re-export their children are
//! no part of any cycle.
//!
//! Checked twice: between modules (`quic::server` and `quic::stream` are two), and between the
//! crate's top-level modules with each one's submodules folded in (so `client` must not use
//! `quic` when `quic` uses `client`), the granularity a reader of lib.rs's module list sees.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// A module path below the crate root, `[]` being the root itself.
type ModPath = Vec<String>;

/// One module: its file's code (comments and literals blanked) and what it re-exports.
struct Module {
    code: String,
    /// Name visible from outside → the path it stands for (absolute).
    reexports: BTreeMap<String, ModPath>,
}

#[test]
fn no_module_cycles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let crate_mods = read_modules(&src);
    assert!(crate_mods.len() > 10, "found only {:?}", crate_mods.keys());
    let edges = dependencies(&crate_mods);
    let mut failures = Vec::new();
    for cycle in cycles(&edges) {
        failures.push(format!("module cycle: {}", show(&cycle)));
    }
    let top: BTreeMap<ModPath, BTreeSet<ModPath>> = edges.iter().fold(
        BTreeMap::new(),
        |mut acc: BTreeMap<ModPath, BTreeSet<ModPath>>, (from, tos)| {
            let Some(from) = from.first().map(|f| vec![f.clone()]) else {
                return acc;
            };
            for to in tos.iter().filter(|t| !t.is_empty()) {
                let to = to[..1].to_vec();
                if to != from {
                    acc.entry(from.clone()).or_default().insert(to);
                }
            }
            acc.entry(from).or_default();
            acc
        },
    );
    for cycle in cycles(&top) {
        failures.push(format!("top-level module cycle: {}", show(&cycle)));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_checker_sees_a_cycle() {
    // The checker itself: two modules using each other, one through a re-export.
    let mut mods = BTreeMap::new();
    let module = |code: &str| Module {
        code: blank(code),
        reexports: BTreeMap::new(),
    };
    mods.insert(vec![], module("mod a; mod b; pub use b::Thing;"));
    mods.insert(vec!["a".to_string()], module("use crate::Thing;"));
    mods.insert(
        vec!["b".to_string()],
        module("pub struct Thing; fn f() { crate::a::g() }"),
    );
    for (path, m) in mods.iter_mut() {
        m.reexports = reexports(path, &m.code);
    }
    let found = cycles(&dependencies(&mods));
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(show(&found[0]), "a -> b -> a");
}

/// Every `.rs` file under `dir` as a module: `lib.rs` is the root, `x/mod.rs` and `x.rs` are
/// `x`, `x/y.rs` is `x::y`.
fn read_modules(dir: &Path) -> BTreeMap<ModPath, Module> {
    let mut files = Vec::new();
    collect(dir, &mut files);
    let mut mods = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(dir).unwrap_or(&file);
        let mut path: ModPath = rel
            .with_extension("")
            .iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect();
        if path.last().is_some_and(|l| l == "mod" || l == "lib") {
            path.pop();
        }
        let text = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
        let code = blank(&text);
        let reexports = reexports(&path, &code);
        mods.insert(path, Module { code, reexports });
    }
    mods
}

fn collect(dir: &Path, files: &mut Vec<std::path::PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

/// The code with comments, string and char literals replaced by spaces, so braces and paths
/// inside them are not read as code.
fn blank(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        let end = if c == '/' && next == Some('/') {
            (i..chars.len())
                .find(|&j| chars[j] == '\n')
                .unwrap_or(chars.len())
        } else if c == '/' && next == Some('*') {
            (i + 2..chars.len())
                .find(|&j| chars[j - 1] == '*' && chars[j] == '/')
                .map_or(chars.len(), |j| j + 1)
        } else if c == '"' || (c == 'r' && matches!(next, Some('"' | '#'))) {
            string_end(&chars, i).unwrap_or(i + 1)
        } else if c == '\'' {
            char_end(&chars, i).unwrap_or(i + 1)
        } else {
            // Non-ASCII outside literals can only be in identifiers: blanked too, so the
            // scanner below may index bytes.
            out.push(if c.is_ascii() { c } else { ' ' });
            i += 1;
            continue;
        };
        out.extend(
            chars[i..end]
                .iter()
                .map(|&c| if c == '\n' { '\n' } else { ' ' }),
        );
        i = end;
    }
    out
}

/// Where a (raw) string literal starting at `i` ends, exclusive.
fn string_end(chars: &[char], i: usize) -> Option<usize> {
    if chars[i] == 'r' {
        let hashes = chars[i + 1..].iter().take_while(|&&c| c == '#').count();
        if chars.get(i + 1 + hashes) != Some(&'"') {
            return None;
        }
        let close: Vec<char> = std::iter::once('"')
            .chain((0..hashes).map(|_| '#'))
            .collect();
        let start = i + 2 + hashes;
        return (start..chars.len())
            .find(|&j| chars[j..].starts_with(&close))
            .map(|j| j + close.len());
    }
    let mut j = i + 1;
    while j < chars.len() {
        match chars[j] {
            '\\' => j += 2,
            '"' => return Some(j + 1),
            _ => j += 1,
        }
    }
    None
}

/// Where a char literal starting at `i` ends, or `None` for a lifetime.
fn char_end(chars: &[char], i: usize) -> Option<usize> {
    match chars.get(i + 1)? {
        '\\' => (i + 2..chars.len())
            .find(|&j| chars[j] == '\'')
            .map(|j| j + 1),
        _ if chars.get(i + 2) == Some(&'\'') => Some(i + 3),
        _ => None,
    }
}

/// The names `module` re-exports (`pub use`, `pub(crate) use`, ...), with where they lead.
fn reexports(module: &ModPath, code: &str) -> BTreeMap<String, ModPath> {
    let mut found = BTreeMap::new();
    for (stmt, public) in use_statements(code) {
        if !public {
            continue;
        }
        for leaf in use_tree_leaves(&stmt) {
            let Some(abs) = absolute(module, &[], &leaf.path) else {
                continue;
            };
            let name = leaf
                .rename
                .unwrap_or_else(|| abs.last().cloned().unwrap_or_default());
            found.insert(name, abs);
        }
    }
    found
}

/// Each `use` statement's tree text, and whether it is a re-export.
fn use_statements(code: &str) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(at) = find_word(rest, "use") {
        let before = rest[..at].trim_end();
        let public = ["pub", "pub(crate)", "pub(super)", "pub(self)"]
            .iter()
            .any(|p| before.ends_with(p));
        let after = &rest[at + 3..];
        let end = after.find(';').unwrap_or(after.len());
        out.push((after[..end].trim().to_string(), public));
        rest = &after[end..];
    }
    out
}

/// The byte offset of `word` as a whole word in `text`.
fn find_word(text: &str, word: &str) -> Option<usize> {
    let is_ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut from = 0;
    while let Some(at) = text[from..].find(word).map(|a| a + from) {
        let before_ok = !text[..at].chars().next_back().is_some_and(is_ident);
        let after_ok = !text[at + word.len()..].chars().next().is_some_and(is_ident);
        if before_ok && after_ok {
            return Some(at);
        }
        from = at + word.len();
    }
    None
}

struct Leaf {
    path: Vec<String>,
    rename: Option<String>,
}

/// The paths a use tree names: `a::{b, c::{d as e}}` is `a::b` and `a::c::d` (as `e`).
fn use_tree_leaves(tree: &str) -> Vec<Leaf> {
    fn walk(tree: &str, prefix: &[String], out: &mut Vec<Leaf>) {
        let tree = tree.trim();
        if let Some(open) = tree.find('{') {
            let mut path = prefix.to_vec();
            path.extend(segments(&tree[..open]));
            let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
            for part in split_top(inner) {
                walk(part, &path, out);
            }
            return;
        }
        let (path, rename) = match tree.split_once(" as ") {
            Some((p, r)) => (p, Some(r.trim().to_string())),
            None => (tree, None),
        };
        let mut full = prefix.to_vec();
        full.extend(segments(path));
        if full.last().is_some_and(|s| s == "self") {
            full.pop();
        }
        if !full.is_empty() && full.last().is_some_and(|s| s != "*") {
            out.push(Leaf { path: full, rename });
        } else if full.len() > 1 {
            full.pop();
            out.push(Leaf { path: full, rename });
        }
    }
    let mut out = Vec::new();
    walk(tree, &[], &mut out);
    out
}

fn segments(path: &str) -> Vec<String> {
    path.split("::")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Splits on commas outside braces.
fn split_top(text: &str) -> Vec<&str> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0, 0);
    for (i, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts.into_iter().filter(|p| !p.trim().is_empty()).collect()
}

/// `path` as written in `module` (inside its inline modules `inline`) made absolute, or `None`
/// when it names another crate.
fn absolute(module: &ModPath, inline: &[String], path: &[String]) -> Option<ModPath> {
    let mut here: ModPath = module.iter().chain(inline).cloned().collect();
    let mut rest = path;
    match rest.first().map(String::as_str) {
        Some("crate") => {
            here.clear();
            rest = &rest[1..];
        }
        Some("self") => rest = &rest[1..],
        Some("super") => {
            while rest.first().is_some_and(|s| s == "super") {
                here.pop();
                rest = &rest[1..];
            }
        }
        // A plain path in a `use` is relative to the module (edition 2018): a child module's
        // name, or an external crate's.
        _ => {}
    }
    here.extend(rest.iter().cloned());
    Some(here)
}

/// The module (a file) an absolute path leads to, following re-exports.
fn resolve(mods: &BTreeMap<ModPath, Module>, path: &ModPath, depth: usize) -> Option<ModPath> {
    let longest = (0..=path.len())
        .rev()
        .find(|&n| mods.contains_key(&path[..n]))?;
    let module = path[..longest].to_vec();
    if let Some(item) = path.get(longest)
        && let Some(target) = mods[&module].reexports.get(item)
        && depth < 8
    {
        let mut target = target.clone();
        target.extend(path[longest + 1..].iter().cloned());
        return resolve(mods, &target, depth + 1);
    }
    Some(module)
}

/// Who uses whom: every path from `crate::`, `super::`, `self::`, and every non-re-export `use`.
fn dependencies(mods: &BTreeMap<ModPath, Module>) -> BTreeMap<ModPath, BTreeSet<ModPath>> {
    let mut edges: BTreeMap<ModPath, BTreeSet<ModPath>> = BTreeMap::new();
    for (path, module) in mods {
        let mut uses = Vec::new();
        for (inline, stmt, public) in statements_in_scope(&module.code) {
            if public {
                continue;
            }
            for leaf in use_tree_leaves(&stmt) {
                uses.push((inline.clone(), leaf.path));
            }
        }
        for (inline, expr) in inline_paths(&module.code) {
            uses.push((inline, expr));
        }
        let entry = edges.entry(path.clone()).or_default();
        for (inline, used) in uses {
            let Some(abs) = absolute(path, &inline, &used) else {
                continue;
            };
            if let Some(target) = resolve(mods, &abs, 0)
                && !target.is_empty()
                && target != *path
            {
                entry.insert(target);
            }
        }
    }
    edges
}

/// `use` statements with the inline modules (`mod tests { ... }`) they sit in.
fn statements_in_scope(code: &str) -> Vec<(Vec<String>, String, bool)> {
    let mut out = Vec::new();
    for (scope, text) in scopes(code) {
        for (stmt, public) in use_statements(&text) {
            out.push((scope.clone(), stmt, public));
        }
    }
    out
}

/// `crate::a::b` / `super::a` / `self::a` paths outside `use` statements.
fn inline_paths(code: &str) -> Vec<(Vec<String>, Vec<String>)> {
    let mut out = Vec::new();
    for (scope, text) in scopes(code) {
        let mut without_uses = text.clone();
        for (stmt, _) in use_statements(&text) {
            without_uses = without_uses.replacen(&stmt, "", 1);
        }
        for head in ["crate::", "super::", "self::"] {
            let mut rest = without_uses.as_str();
            while let Some(at) = find_word(rest, &head[..head.len() - 2]) {
                let tail = &rest[at..];
                let len = tail
                    .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                    .unwrap_or(tail.len());
                if tail.starts_with(head) {
                    out.push((scope.clone(), segments(&tail[..len])));
                }
                rest = &tail[len.max(1)..];
            }
        }
    }
    out
}

/// The code split by inline module: `(["tests"], text of mod tests)`, and `([], the rest)`.
fn scopes(code: &str) -> Vec<(Vec<String>, String)> {
    let mut out: Vec<(Vec<String>, String)> = vec![(Vec::new(), String::new())];
    let mut stack: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let bytes = code.as_bytes();
    let mut i = 0;
    while i < code.len() {
        if let Some(name) = inline_mod_at(code, i) {
            stack.push((name.0, depth));
            depth += 1;
            i = name.1;
            let scope = stack.iter().map(|(n, _)| n.clone()).collect();
            out.push((scope, String::new()));
            continue;
        }
        match bytes[i] {
            b'{' => depth += 1,
            b'}' => {
                depth = depth.saturating_sub(1);
                if stack.last().is_some_and(|(_, d)| *d == depth) {
                    stack.pop();
                    let scope = stack.iter().map(|(n, _)| n.clone()).collect();
                    out.push((scope, String::new()));
                }
            }
            _ => {}
        }
        if let Some(last) = out.last_mut() {
            last.1.push(bytes[i] as char);
        }
        i += 1;
    }
    out
}

/// `mod name {` starting at `i`: the name and the offset after the brace.
fn inline_mod_at(code: &str, i: usize) -> Option<(String, usize)> {
    let rest = &code[i..];
    if !rest.starts_with("mod ")
        || code[..i]
            .chars()
            .next_back()
            .is_some_and(char::is_alphanumeric)
    {
        return None;
    }
    let after = rest[4..].trim_start();
    let len = after.find(|c: char| !(c.is_alphanumeric() || c == '_'))?;
    let brace = after[len..].trim_start();
    if !brace.starts_with('{') {
        return None;
    }
    let consumed = code.len() - i - brace.len() + 1;
    Some((after[..len].to_string(), i + consumed))
}

/// Every cycle, one per strongly connected component of more than one module.
fn cycles(edges: &BTreeMap<ModPath, BTreeSet<ModPath>>) -> Vec<Vec<ModPath>> {
    let mut out = Vec::new();
    let mut reported: BTreeSet<ModPath> = BTreeSet::new();
    for start in edges.keys() {
        if reported.contains(start) {
            continue;
        }
        if let Some(cycle) = path_back(edges, start) {
            reported.extend(cycle.iter().cloned());
            out.push(cycle);
        }
    }
    out
}

/// The shortest path from `start` back to itself (breadth first), if any.
fn path_back(
    edges: &BTreeMap<ModPath, BTreeSet<ModPath>>,
    start: &ModPath,
) -> Option<Vec<ModPath>> {
    let mut came_from: BTreeMap<ModPath, ModPath> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([start.clone()]);
    while let Some(at) = queue.pop_front() {
        for next in edges.get(&at).into_iter().flatten() {
            if next == start {
                let mut cycle = vec![at.clone()];
                while let Some(prev) = came_from.get(cycle.last()?) {
                    cycle.push(prev.clone());
                }
                cycle.reverse();
                if cycle.first() != Some(start) {
                    cycle.insert(0, start.clone());
                }
                return Some(cycle);
            }
            if !came_from.contains_key(next) && next != start {
                came_from.insert(next.clone(), at.clone());
                queue.push_back(next.clone());
            }
        }
    }
    None
}

fn show(cycle: &[ModPath]) -> String {
    let mut names: Vec<String> = cycle.iter().map(|p| p.join("::")).collect();
    if let Some(first) = names.first().cloned() {
        names.push(first);
    }
    names.join(" -> ")
}
