//! The layout rules of `src/lib.rs` and `../shared/STYLE.md` that matter most, checked on the
//! source itself: sessions and the HTTP API reach the broker only through the node, only
//! `server` names a concrete broker, and files and functions stay small enough to read.

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
        // The Redis presence and lifecycle stores ride on the Redis broker's connection: the
        // Redis backends may know each other; nothing above them may.
        if path_text.ends_with("src/server.rs")
            || path_text.contains("src/broker/")
            || path_text.ends_with("src/presence/redis.rs")
            || path_text.ends_with("src/webhook/redis.rs")
        {
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
        "a concrete broker outside server.rs:\n{}",
        offences.join("\n")
    );
}

/// About 600 lines of production code per file, 80 per function (STYLE.md).
const MAX_FILE_LINES: usize = 620;
const MAX_FUNCTION_LINES: usize = 85;

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
