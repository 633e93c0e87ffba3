//! The crate's modules import one way: the layer list at the top of
//! `src/lib.rs` orders them bottom up, and a module may use (`crate::name`)
//! only modules listed before it. An import that goes up would make a
//! circle possible again; this names it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn source_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The modules in layer order, from the `// layer:` lines of lib.rs.
fn layers() -> Vec<String> {
    let lib = std::fs::read_to_string(source_dir().join("lib.rs")).expect("read src/lib.rs");
    lib.lines()
        .filter_map(|line| line.trim().strip_prefix("// layer:"))
        .flat_map(|line| {
            let names = line.trim().split("  ").next().unwrap_or_default();
            names
                .split(',')
                .map(|name| name.trim().to_owned())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("list the sources") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            sources(&path, found);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            found.push(path);
        }
    }
}

/// The crate modules a file names as `crate::name`, outside comments.
fn uses(text: &str) -> BTreeSet<String> {
    let mut used = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or_default();
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            if !name.is_empty() {
                used.insert(name);
            }
        }
    }
    used
}

#[test]
fn every_module_imports_only_the_layers_below_it() {
    let order = layers();
    assert!(order.len() > 10, "no layer list in src/lib.rs: {order:?}");
    let root = source_dir();
    let mut files = Vec::new();
    sources(&root, &mut files);
    let mut upward = Vec::new();
    let mut unlisted = BTreeSet::new();
    for file in &files {
        let relative = file.strip_prefix(&root).expect("under src");
        let top = relative
            .components()
            .next()
            .and_then(|first| first.as_os_str().to_str())
            .expect("a file name");
        let module = top.trim_end_matches(".rs");
        if module == "lib" || module == "bin" {
            continue;
        }
        let Some(level) = order.iter().position(|name| name == module) else {
            unlisted.insert(module.to_owned());
            continue;
        };
        let text = std::fs::read_to_string(file).expect("read a source file");
        for used in uses(&text) {
            // Items re-exported at the crate root (`crate::Error`,
            // `crate::daemonized` in docs) are not modules.
            let Some(used_level) = order.iter().position(|name| *name == used) else {
                continue;
            };
            if used != module && used_level > level {
                upward.push(format!("{} uses crate::{used}", relative.display()));
            }
        }
    }
    assert!(
        unlisted.is_empty(),
        "modules missing from the layer list in src/lib.rs: {unlisted:?}"
    );
    assert!(
        upward.is_empty(),
        "imports that go up the layers:\n{}",
        upward.join("\n")
    );
}
