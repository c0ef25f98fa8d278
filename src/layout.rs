//! The module layout holds: imports point down (no cycle among the top-level modules, counting every
//! `crate::<module>` path, docs included, so in particular no two name each other), and only `main`
//! reaches `cli`. `docs/architecture.md` lists the arrows; this test keeps them true.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module a file belongs to (`verify/engine.rs` → `verify`); `None` for `lib.rs`/`main.rs`.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (name != "lib" && name != "main").then(|| name.to_string())
}

/// Module → the other top-level modules it names as `crate::<module>` (also inside `crate::{a, b}`).
fn references(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let modules: BTreeSet<String> = files.iter().filter_map(|f| module_of(src, f)).collect();
    let mut refs: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &files {
        let Some(m) = module_of(src, f) else { continue };
        let text = std::fs::read_to_string(f).unwrap();
        let mut named = BTreeSet::new();
        for (i, _) in text.match_indices("crate::") {
            let rest = &text[i + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                let inner = &group[..group.find('}').unwrap_or(0)];
                for part in inner.split(',') {
                    let word: String = part
                        .trim()
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    named.insert(word);
                }
            } else {
                let word: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                named.insert(word);
            }
        }
        refs.entry(m.clone())
            .or_default()
            .extend(named.into_iter().filter(|n| *n != m && modules.contains(n)));
    }
    refs
}

/// A cycle through `m` (as a path `m -> … -> m`), depth first.
fn cycle_from(
    refs: &BTreeMap<String, BTreeSet<String>>,
    m: &str,
    path: &mut Vec<String>,
    done: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    if let Some(at) = path.iter().position(|p| p == m) {
        let mut c = path[at..].to_vec();
        c.push(m.to_string());
        return Some(c);
    }
    if done.contains(m) {
        return None;
    }
    path.push(m.to_string());
    for next in refs.get(m).into_iter().flatten() {
        if let Some(c) = cycle_from(refs, next, path, done) {
            return Some(c);
        }
    }
    path.pop();
    done.insert(m.to_string());
    None
}

#[test]
fn imports_point_down_and_only_main_uses_cli() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let refs = references(&src);
    assert!(
        refs.get("verify").is_some_and(|r| r.contains("target")),
        "the scan found nothing: {refs:?}"
    );
    let mut cycles = Vec::new();
    for (a, to) in &refs {
        for b in to {
            if a < b && refs.get(b).is_some_and(|r| r.contains(a)) {
                cycles.push(format!("{a} <-> {b}"));
            }
        }
    }
    assert!(
        cycles.is_empty(),
        "modules importing each other: {cycles:?}"
    );
    let mut done = BTreeSet::new();
    for m in refs.keys() {
        if let Some(c) = cycle_from(&refs, m, &mut Vec::new(), &mut done) {
            panic!("an import cycle: {}", c.join(" -> "));
        }
    }
    let cli_users: Vec<&String> = refs
        .iter()
        .filter(|(_, to)| to.contains("cli"))
        .map(|(m, _)| m)
        .collect();
    assert!(
        cli_users.is_empty(),
        "only main may use cli, also: {cli_users:?}"
    );
}
