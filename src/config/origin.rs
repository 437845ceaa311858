//! Where each setting's value came from — a flag, a `TIDINGS_*` variable or a key of the
//! configuration file — so that a mistake is reported where the operator made it.

use std::collections::BTreeMap;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory};

use super::cli::Cli;
use super::file::settings;

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
