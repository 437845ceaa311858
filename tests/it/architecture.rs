//! The layout rules of `src/lib.rs` and `../shared/STYLE.md`, checked on the source itself:
//! the modules form layers (each uses only those below it, in the order `lib.rs` lists them),
//! sessions and the HTTP API reach the broker only through the node, only `server` names a
//! concrete broker, and files and functions stay small enough to read.

use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`, with its text.
fn sources(dir: &str) -> Vec<(PathBuf, String)> {
    fn walk(dir: &Path, found: &mut Vec<(PathBuf, String)>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|err| panic!("reading {}: {err}", dir.display()))
            .map(|entry| entry.expect("directory entry").path())
            .collect();
        entries.sort();
        for path in entries {
            if path.is_dir() {
                walk(&path, found);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                let text = std::fs::read_to_string(&path).expect("source file");
                found.push((path, text));
            }
        }
    }
    let mut found = Vec::new();
    walk(&Path::new(env!("CARGO_MANIFEST_DIR")).join(dir), &mut found);
    assert!(!found.is_empty(), "no sources under {dir}");
    found
}

/// The production part of a file: everything before its `#[cfg(test)] mod tests`, and
/// nothing of a `tests.rs`.
fn production(path: &Path, text: &str) -> Vec<String> {
    if path.file_name().is_some_and(|name| name == "tests.rs") {
        return Vec::new();
    }
    let lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let end = lines
        .windows(2)
        .position(|pair| {
            pair[0].trim() == "#[cfg(test)]" && pair[1].trim_start().contains("mod tests")
        })
        .unwrap_or(lines.len());
    lines[..end].to_vec()
}

/// Lines that are code, not comments.
fn code(lines: &[String]) -> impl Iterator<Item = (usize, &str)> {
    lines
        .iter()
        .enumerate()
        .map(|(n, line)| (n + 1, line.as_str()))
        .filter(|(_, line)| !line.trim_start().starts_with("//"))
}

#[test]
fn sessions_and_the_http_api_reach_the_broker_only_through_the_node() {
    let mut offences = Vec::new();
    for dir in ["src/session", "src/api", "src/transport"] {
        for (path, text) in sources(dir) {
            for (n, line) in code(&production(&path, &text)) {
                if line.contains("crate::broker") || line.contains("broker::") {
                    offences.push(format!("{}:{n}: {}", path.display(), line.trim()));
                }
            }
        }
    }
    assert!(
        offences.is_empty(),
        "broker used directly:\n{}",
        offences.join("\n")
    );
}

#[test]
fn only_the_server_names_a_concrete_broker() {
    let mut offences = Vec::new();
    for (path, text) in sources("src") {
        let path_text = path.to_string_lossy().replace('\\', "/");
        // The Redis presence and lifecycle stores ride on the broker's connection through
        // `broker::RedisStore`, which names no concrete broker.
        if path_text.ends_with("src/server/mod.rs") || path_text.contains("src/broker/") {
            continue;
        }
        for (n, line) in code(&production(&path, &text)) {
            if [
                "MemoryBroker",
                "RedisBroker",
                "broker::memory",
                "broker::redis",
            ]
            .iter()
            .any(|name| line.contains(name))
            {
                offences.push(format!("{}:{n}: {}", path.display(), line.trim()));
            }
        }
    }
    assert!(
        offences.is_empty(),
        "a concrete broker outside server/mod.rs:\n{}",
        offences.join("\n")
    );
}

/// The modules from the top layer down: each may use only those after it. `lib.rs` declares
/// them in this order.
const LAYERS: &[&str] = &[
    // The fuzz targets' way in (feature `fuzzing`): drives a transport's parts directly.
    "fuzzing",
    "server",
    "api",
    "transport",
    "session",
    "node",
    "hub",
    "outbox",
    "webhook",
    "presence",
    "broker",
    "backend",
    "auth",
    "limits",
    "config",
    "metrics",
    "pusher",
    "protocol",
    "connection",
    "frame",
];

/// The top-level module a source file belongs to (`src/session/dispatch.rs` → `session`).
fn module_of(path: &Path) -> Option<String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let relative = path.strip_prefix(&src).ok()?;
    let first = relative.components().next()?.as_os_str().to_str()?;
    Some(first.trim_end_matches(".rs").to_owned())
}

/// Every module a line names with a `crate::` path, `use crate::{a, b}` included.
fn crate_paths(line: &str) -> Vec<String> {
    let mut found = Vec::new();
    for (at, _) in line.match_indices("crate::") {
        let rest = &line[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let inner = group.split('}').next().unwrap_or("");
            found.extend(inner.split(',').filter_map(|part| {
                let name = part.trim().split("::").next()?.trim();
                (!name.is_empty()).then(|| name.to_owned())
            }));
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            found.push(name);
        }
    }
    found
}

#[test]
fn lib_rs_declares_the_modules_in_layer_order() {
    let lib = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs"))
        .expect("src/lib.rs");
    let declared: Vec<&str> = lib
        .lines()
        .filter_map(|line| line.trim().strip_suffix(';'))
        .filter_map(|line| line.split("mod ").nth(1).filter(|_| line.contains("mod ")))
        .collect();
    assert_eq!(
        declared, LAYERS,
        "lib.rs's modules, in order, are the layers"
    );
}

#[test]
fn every_module_uses_only_the_layers_below_it() {
    assert!(crate_paths("use crate::{a, b::C};") == ["a", "b"]);
    let rank = |module: &str| LAYERS.iter().position(|layer| *layer == module);
    let mut offences = Vec::new();
    let mut checked = 0;
    for (path, text) in sources("src") {
        let Some(module) = module_of(&path) else {
            continue;
        };
        // The binary sits above every layer.
        let Some(own) = rank(&module) else {
            assert!(
                module == "main" || module == "lib",
                "{module} is in no layer"
            );
            continue;
        };
        for (n, line) in code(&production(&path, &text)) {
            for used in crate_paths(line) {
                checked += 1;
                match rank(&used) {
                    Some(below) if below > own => {}
                    Some(same) if same == own => {}
                    _ => offences.push(format!("{}:{n}: {module} uses {used}", path.display())),
                }
            }
        }
    }
    assert!(
        checked > 100,
        "only {checked} crate paths found: is the parser broken?"
    );
    assert!(
        offences.is_empty(),
        "a module uses one at or above its layer:\n{}",
        offences.join("\n")
    );
}

/// About 600 lines of production code per file, 80 per function (STYLE.md).
const MAX_FILE_LINES: usize = 600;
const MAX_FUNCTION_LINES: usize = 80;

#[test]
fn files_and_functions_stay_small() {
    let mut offences = Vec::new();
    for (path, text) in sources("src") {
        let lines = production(&path, &text);
        if lines.len() > MAX_FILE_LINES {
            offences.push(format!("{}: {} lines", path.display(), lines.len()));
        }
        for (start, line) in lines.iter().enumerate() {
            let trimmed = line.trim_start();
            let is_fn = ["fn ", "pub fn ", "async fn ", "pub async fn ", "const fn "]
                .iter()
                .chain(&["pub(crate) fn ", "pub(crate) async fn ", "pub(super) fn "])
                .chain(&["pub(super) async fn ", "pub const fn "])
                .any(|prefix| trimmed.starts_with(prefix));
            if !is_fn || trimmed.ends_with(';') {
                continue;
            }
            let indent = &line[..line.len() - trimmed.len()];
            let closing = format!("{indent}}}");
            let Some(length) = lines[start..].iter().position(|l| *l == closing) else {
                continue;
            };
            if length + 1 > MAX_FUNCTION_LINES {
                let name = trimmed.split('(').next().unwrap_or(trimmed);
                offences.push(format!(
                    "{}:{}: {name} is {} lines",
                    path.display(),
                    start + 1,
                    length + 1
                ));
            }
        }
    }
    assert!(offences.is_empty(), "too long:\n{}", offences.join("\n"));
}
