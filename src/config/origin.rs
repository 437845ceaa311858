//! Where each setting's value came from — a flag, a `TIDINGS_*` variable or a key of the
//! configuration file — so that a mistake is reported where the operator made it; and the
//! `TIDINGS_*` variables that are no setting at all (a typo there would otherwise be silently
//! ignored).

use std::collections::BTreeMap;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory};

use super::cli::Cli;
use super::file::{edit_distance, settings};

/// Where one setting's value came from. Defaults have no origin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    Flag,
    Environment(String),
    File { file: String, key: String },
}

/// The origin of every setting that was given a value, by its long flag name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Origins(BTreeMap<String, Origin>);

impl Origins {
    /// The flags and environment variables of a command line.
    pub(super) fn of(matches: &ArgMatches) -> Self {
        let command = Cli::command();
        let mut origins = BTreeMap::new();
        for arg in settings(&command) {
            let Some(long) = arg.get_long() else { continue };
            let origin = match matches.value_source(arg.get_id().as_str()) {
                Some(ValueSource::CommandLine) => Origin::Flag,
                Some(ValueSource::EnvVariable) => match arg.get_env() {
                    Some(name) => Origin::Environment(name.to_string_lossy().into_owned()),
                    None => continue,
                },
                _ => continue,
            };
            origins.insert(long.to_owned(), origin);
        }
        Self(origins)
    }

    /// `key` of `file` gave its setting's value.
    pub(super) fn file(&mut self, file: &str, key: &str) {
        let origin = Origin::File {
            file: file.to_owned(),
            key: key.to_owned(),
        };
        self.0.insert(key.to_owned(), origin);
    }

    pub fn get(&self, flag: &str) -> Option<&Origin> {
        self.0.get(flag)
    }

    /// [`site`](Self::site) of a mistake's flag, if it has one.
    pub fn site_of(&self, flag: Option<&str>) -> Option<String> {
        flag.and_then(|flag| self.site(flag))
    }

    /// Where `flag`'s value was written, as a message about it starts: "FILE: key `k`" or
    /// "environment variable TIDINGS_K". `None` for a flag (whose messages name it already)
    /// and for a default.
    pub fn site(&self, flag: &str) -> Option<String> {
        match self.get(flag)? {
            Origin::Flag => None,
            Origin::Environment(name) => Some(format!("environment variable {name}")),
            Origin::File { file, key } => Some(format!("{file}: key `{key}`")),
        }
    }
}

/// One line per `TIDINGS_*` variable of the environment that no setting reads, with the
/// nearest real one when a typo is likely (`TIDINGS_NAMESPACE` → `TIDINGS_NAMESPACES`).
pub fn stray_environment() -> Vec<String> {
    let command = Cli::command();
    let known: Vec<String> = command
        .get_arguments()
        .filter_map(|arg| arg.get_env())
        .map(|name| name.to_string_lossy().into_owned())
        .collect();
    let mut stray: Vec<String> = std::env::vars_os()
        .filter_map(|(name, _)| name.into_string().ok())
        .filter(|name| name.starts_with("TIDINGS_") && !known.contains(name))
        .collect();
    stray.sort();
    stray
        .into_iter()
        .map(|name| {
            let hint = nearest(&name, &known)
                .map(|near| format!("did you mean {near}?"))
                .unwrap_or_else(|| "`tidings --help` lists every variable".to_owned());
            format!("environment variable {name} is not a Tidings setting and is ignored; {hint}")
        })
        .collect()
}

/// The known name a few edits from `name`, if any.
fn nearest<'a>(name: &str, known: &'a [String]) -> Option<&'a str> {
    known
        .iter()
        .map(|candidate| (edit_distance(name, candidate), candidate.as_str()))
        .filter(|(distance, _)| *distance <= 3)
        .min()
        .map(|(_, candidate)| candidate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn near_misses_get_the_real_name() {
        let known = [
            "TIDINGS_NAMESPACES".to_owned(),
            "TIDINGS_REDIS_URL".to_owned(),
        ];
        assert_eq!(
            nearest("TIDINGS_NAMESPACE", &known),
            Some("TIDINGS_NAMESPACES")
        );
        assert_eq!(
            nearest("TIDINGS_REDIS_URI", &known),
            Some("TIDINGS_REDIS_URL")
        );
        assert_eq!(nearest("TIDINGS_COLOUR", &known), None);
    }
}
