//! README.md, checked against the tree it describes.

use std::path::Path;

/// The Layout section names every source file, or the folder it is in
/// (`src/server/`): a module added without a line there went unnoticed.
/// The tree is the same on every platform, and read from the checkout at
/// run time, which the Windows tests under Wine need not reach.
#[cfg(unix)]
#[test]
fn the_layout_names_every_source_file() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let layout = readme
        .split("\n## Layout\n")
        .nth(1)
        .and_then(|rest| rest.split("\n```\n").nth(1))
        .expect("README.md has a Layout section with a code block");
    let named = |path: &str| {
        layout
            .lines()
            .any(|line| line.starts_with(&format!("{path} ")))
    };
    let mut missing = Vec::new();
    let mut folders = vec![root.join("src")];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                folders.push(path);
                continue;
            }
            let relative = path.strip_prefix(root).unwrap();
            let file = relative.to_string_lossy().replace('\\', "/");
            let folder = relative
                .parent()
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            if !named(&file) && !named(&format!("{folder}/")) {
                missing.push(file);
            }
        }
    }
    missing.sort();
    assert!(missing.is_empty(), "not in README's Layout: {missing:?}");
}
