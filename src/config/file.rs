//! The configuration file (`--config FILE`, TOML) and the command line it joins.
//!
//! Every flag of `tidings serve` is a key of the file under its long name; namespaces are
//! tables (`[namespace.room]`) and the default channel rule may be one (`[channel-rule]`).
//! The file does not get a parser of its own: each of its values is checked by the flag's
//! own value parser, then handed to clap as if it had been typed, for every key whose flag
//! and environment variable are both absent. One parser, one set of defaults, and the
//! precedence flags > environment > file > defaults falls out of clap's value sources.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, CommandFactory, FromArgMatches, Parser};

use super::cli::{Cli, CliCommand, ConfigCommand, ServeArgs};
use super::namespaces::{NamespaceError, NamespaceOptions, parse_namespace};
use super::origin::Origins;

/// What the command line asks for.
#[derive(Debug)]
pub enum Invocation {
    /// Run the server with these settings (the file, if any, merged in).
    Serve(Box<ServeArgs>),
    /// `tidings config check FILE`.
    Check(PathBuf),
    /// `tidings config example`.
    Example,
    /// `tidings config reference`.
    Reference,
}

/// A mistake in a configuration file, or in a `TIDINGS_*` variable. Shown as one line naming
/// the file and the key, or the variable.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{file}: cannot read it: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: not valid TOML: {message}")]
    Syntax { file: String, message: String },
    #[error("{file}: unknown key `{key}`{hint}")]
    UnknownKey {
        file: String,
        key: String,
        hint: String,
    },
    #[error("{file}: key `{key}`: expected {expected}, found {found}")]
    WrongType {
        file: String,
        key: String,
        expected: String,
        found: &'static str,
    },
    #[error("{file}: key `{key}`: {message}")]
    Invalid {
        file: String,
        key: String,
        message: String,
    },
    /// Not the file's but a variable's: the settings reach clap from both the same way.
    #[error("environment variable {variable}: {message}")]
    Environment { variable: String, message: String },
}

/// Keys of the file that are not settings of the server.
const NOT_IN_FILE: [&str; 3] = ["config", "help", "version"];

/// Reads the command line (and the configuration file it names, if any). Usage mistakes of
/// the command line itself end the process the way clap does (message, exit code 2).
pub fn parse_command_line(argv: Vec<OsString>) -> Result<Invocation, FileError> {
    let matches = match Cli::command().try_get_matches_from(&argv) {
        Ok(matches) => matches,
        Err(err) => return Err(from_environment(&err, &argv).unwrap_or_else(|| err.exit())),
    };
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|err| err.exit());
    let serving = match cli.command {
        Some(CliCommand::Config(ConfigCommand::Check { file })) => {
            return Ok(Invocation::Check(file));
        }
        Some(CliCommand::Config(ConfigCommand::Example)) => return Ok(Invocation::Example),
        Some(CliCommand::Config(ConfigCommand::Reference)) => return Ok(Invocation::Reference),
        Some(CliCommand::Serve(_)) => matches
            .subcommand_matches("serve")
            .unwrap_or(&matches)
            .clone(),
        None => matches,
    };
    let mut origins = Origins::of(&serving);
    let mut args = cli.into_serve_args();
    let Some(path) = args.config.clone() else {
        args.origins = origins;
        return Ok(Invocation::Serve(Box::new(args)));
    };
    let file = path.display().to_string();
    let (extra, keys) = file_arguments(&path, &serving)?;
    for key in &keys {
        origins.file(&file, key);
    }
    let mut argv = argv;
    argv.extend(extra);
    let cli = Cli::try_parse_from(&argv).map_err(|err| FileError::Invalid {
        file,
        key: "?".into(),
        message: err.to_string().trim().to_owned(),
    })?;
    let mut args = cli.into_serve_args();
    args.origins = origins;
    Ok(Invocation::Serve(Box::new(args)))
}

/// A value clap refused that came from a `TIDINGS_*` variable rather than the command line:
/// the message names the variable, which clap's (naming only the flag) would leave the
/// operator to guess.
fn from_environment(err: &clap::Error, argv: &[OsString]) -> Option<FileError> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if !matches!(
        err.kind(),
        ErrorKind::ValueValidation | ErrorKind::InvalidValue
    ) {
        return None;
    }
    let Some(ContextValue::String(invalid)) = err.get(ContextKind::InvalidArg) else {
        return None;
    };
    let long = invalid.strip_prefix("--")?.split([' ', '=']).next()?;
    let command = Cli::command();
    let arg = command
        .get_arguments()
        .find(|arg| arg.get_long() == Some(long))?;
    let typed = argv.iter().any(|given| {
        given.to_str().is_some_and(|given| {
            given == format!("--{long}") || given.starts_with(&format!("--{long}="))
        })
    });
    let variable = arg.get_env()?.to_string_lossy().into_owned();
    if typed || std::env::var_os(&variable).is_none() {
        return None;
    }
    let value = match err.get(ContextKind::InvalidValue) {
        Some(ContextValue::String(value)) => format!("{value:?}"),
        _ => "its value".to_owned(),
    };
    Some(FileError::Environment {
        message: format!("invalid value {value} for --{long}: {}", clap_reason(err)),
        variable,
    })
}

/// The settings `tidings config check FILE` validates: the file over the environment's
/// `TIDINGS_*` variables and the defaults, as the server would read them with no flags.
pub fn check_file(path: &Path) -> Result<ServeArgs, FileError> {
    let argv: Vec<OsString> = vec!["tidings".into(), "--config".into(), path.into()];
    match parse_command_line(argv)? {
        Invocation::Serve(args) => Ok(*args),
        _ => unreachable!("a plain --config is a serve invocation"),
    }
}

/// Reads the file and turns every key whose flag and environment variable are absent into
/// command-line arguments, returned with those keys; checks every key, overridden or not.
fn file_arguments(
    path: &Path,
    serving: &ArgMatches,
) -> Result<(Vec<OsString>, Vec<String>), FileError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| FileError::Read {
        file: file.clone(),
        source,
    })?;
    let table: toml::Table = text.parse().map_err(|err: toml::de::Error| {
        let at = err.span().map(|span| {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {column}: ")
        });
        FileError::Syntax {
            file: file.clone(),
            message: format!("{}{}", at.unwrap_or_default(), err.message()),
        }
    })?;
    let command = Cli::command();
    let mut extra = Vec::new();
    let mut applied = Vec::new();
    for (key, value) in &table {
        let arg = settings(&command)
            .find(|arg| arg.get_long() == Some(key.as_str()))
            .ok_or_else(|| FileError::UnknownKey {
                file: file.clone(),
                key: key.clone(),
                hint: hint(&command, key),
            })?;
        let values = values_of(&file, key, arg, value)?;
        for text in &values {
            // The flag's own parser, through a throwaway command line holding only it.
            let probe = if takes_no_value(arg) {
                vec![]
            } else {
                vec![format!("--{key}={text}")]
            };
            Cli::command()
                .try_get_matches_from(std::iter::once("tidings".to_owned()).chain(probe))
                .map_err(|err| FileError::Invalid {
                    file: file.clone(),
                    key: key.clone(),
                    message: format!("invalid value {text:?}: {}", clap_reason(&err)),
                })?;
        }
        let overridden = matches!(
            serving.value_source(arg.get_id().as_str()),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        );
        if overridden {
            continue;
        }
        applied.push(key.clone());
        for text in values {
            if takes_no_value(arg) {
                // A switch: present means on; off is its default.
                if text == "true" {
                    extra.push(format!("--{key}").into());
                }
            } else {
                extra.push(format!("--{key}={text}").into());
            }
        }
    }
    Ok((extra, applied))
}

/// Every setting of `tidings serve`, in the order of `--help`.
pub(super) fn settings(command: &clap::Command) -> impl Iterator<Item = &Arg> {
    command.get_arguments().filter(|arg| {
        arg.get_long()
            .is_some_and(|long| !NOT_IN_FILE.contains(&long))
            && !arg.is_hide_set()
    })
}

/// What kind of value a setting takes, from its value name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Bool,
    Integer,
    Size,
    Duration,
    Text,
}

pub(super) fn kind(arg: &Arg) -> Kind {
    if takes_no_value(arg) {
        return Kind::Bool;
    }
    let name = arg
        .get_value_names()
        .and_then(|names| names.first())
        .map(|name| name.as_str())
        .unwrap_or("");
    match name {
        "BOOL" => Kind::Bool,
        "N" => Kind::Integer,
        "SIZE" => Kind::Size,
        "DURATION" => Kind::Duration,
        _ => Kind::Text,
    }
}

pub(super) fn takes_no_value(arg: &Arg) -> bool {
    matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse)
}

pub(super) fn repeatable(arg: &Arg) -> bool {
    matches!(arg.get_action(), ArgAction::Append)
}

impl Kind {
    fn expected(self) -> &'static str {
        match self {
            Kind::Bool => "a boolean (true or false)",
            Kind::Integer => "an integer",
            Kind::Size => "a size (an integer of bytes, or a string like \"64KiB\")",
            Kind::Duration => "a duration string like \"25s\", \"500ms\" or \"10m\"",
            Kind::Text => "a string",
        }
    }

    /// The value as the flag would take it, or `None` when the TOML type is wrong.
    fn text(self, value: &toml::Value) -> Option<String> {
        use toml::Value::{Boolean, Integer, String as Str};
        match (self, value) {
            (Kind::Bool, Boolean(b)) => Some(b.to_string()),
            (Kind::Integer | Kind::Size, Integer(i)) => Some(i.to_string()),
            (Kind::Size | Kind::Duration | Kind::Text, Str(s)) => Some(s.clone()),
            _ => None,
        }
    }
}

/// The values a key gives its flag (several for a repeatable one).
fn values_of(
    file: &str,
    key: &str,
    arg: &Arg,
    value: &toml::Value,
) -> Result<Vec<String>, FileError> {
    match (key, value) {
        ("namespace", toml::Value::Table(namespaces)) => {
            return namespaces
                .iter()
                .map(|(name, rules)| namespace_spec(file, name, rules))
                .collect();
        }
        ("channel-rule", toml::Value::Table(rules)) => {
            let spec = rules_spec(file, "channel-rule", rules)?;
            let probe = format!("default:{spec}");
            check_rules(file, "channel-rule", &probe)?;
            return Ok(vec![spec]);
        }
        _ => {}
    }
    let kind = kind(arg);
    let wrong = |expected: String| FileError::WrongType {
        file: file.into(),
        key: key.into(),
        expected,
        found: type_name(value),
    };
    match value {
        toml::Value::Array(items) if repeatable(arg) => items
            .iter()
            .map(|item| kind.text(item).ok_or_else(|| wrong(kind.expected().into())))
            .collect(),
        _ if key == "namespace" => Err(wrong("a table of namespaces ([namespace.NAME])".into())),
        _ => {
            let expected = if repeatable(arg) {
                format!("{} or an array of them", kind.expected())
            } else {
                kind.expected().into()
            };
            kind.text(value)
                .map(|text| vec![text])
                .ok_or_else(|| wrong(expected))
        }
    }
}

/// `[namespace.NAME]` → `NAME:key=value,…`, checked key by key.
fn namespace_spec(file: &str, name: &str, rules: &toml::Value) -> Result<String, FileError> {
    let key = format!("namespace.{name}");
    let toml::Value::Table(rules) = rules else {
        return Err(FileError::WrongType {
            file: file.into(),
            key,
            expected: "a table of rules (subscribe = \"anyone\", presence = true, …)".into(),
            found: type_name(rules),
        });
    };
    let spec = format!("{name}:{}", rules_spec(file, &key, rules)?);
    check_rules(file, &key, &spec)?;
    Ok(spec)
}

/// A table of rules → `key=value,…`.
fn rules_spec(file: &str, at: &str, rules: &toml::Table) -> Result<String, FileError> {
    let mut spec = String::new();
    for (key, value) in rules {
        let text = match value {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            other => {
                return Err(FileError::WrongType {
                    file: file.into(),
                    key: format!("{at}.{key}"),
                    expected: "a string, an integer or a boolean".into(),
                    found: type_name(other),
                });
            }
        };
        if text.contains([',', '=', ';']) {
            return Err(FileError::Invalid {
                file: file.into(),
                key: format!("{at}.{key}"),
                message: format!("{text:?} may not contain `,`, `=` or `;`"),
            });
        }
        if !spec.is_empty() {
            spec.push(',');
        }
        let _ = write!(spec, "{key}={text}");
    }
    Ok(spec)
}

/// Checks a namespace spec now, so the message can name the key in the file.
fn check_rules(file: &str, at: &str, spec: &str) -> Result<(), FileError> {
    let open = NamespaceOptions::open(super::HistorySettings {
        size: 0,
        ttl: std::time::Duration::ZERO,
    });
    let name = spec.split_once(':').map_or(spec, |(name, _)| name);
    let base = super::Namespaces::base(name, &open);
    parse_namespace(spec, &base).map(drop).map_err(|err| {
        let (key, message) = match &err {
            NamespaceError::Value {
                key,
                value,
                expected,
                ..
            } => (
                format!("{at}.{key}"),
                format!("{value:?} is not {expected}"),
            ),
            NamespaceError::Key { key, .. } => (
                format!("{at}.{key}"),
                "unknown rule (subscribe, publish, history-size, history-ttl, presence, \
                 join-leave, join-leave-limit, join-leave-batch, proxy-subscribe, \
                 proxy-publish, receipts, compression)"
                    .into(),
            ),
            NamespaceError::Name { .. } => (
                at.into(),
                "a namespace name is made of letters, digits, _ and -".into(),
            ),
            NamespaceError::JoinLeaveWithoutPresence { .. } => {
                (format!("{at}.join-leave"), "needs presence = true".into())
            }
            NamespaceError::ReceiptsNotPersonal { .. } => (
                format!("{at}.receipts"),
                "is for personal channels: needs subscribe = \"user\"".into(),
            ),
            NamespaceError::Pair { .. } => (at.into(), err.to_string()),
        };
        FileError::Invalid {
            file: file.into(),
            key,
            message,
        }
    })
}

fn type_name(value: &toml::Value) -> &'static str {
    match value {
        toml::Value::String(_) => "a string",
        toml::Value::Integer(_) => "an integer",
        toml::Value::Float(_) => "a float",
        toml::Value::Boolean(_) => "a boolean",
        toml::Value::Datetime(_) => "a date-time",
        toml::Value::Array(_) => "an array",
        toml::Value::Table(_) => "a table",
    }
}

/// The reason inside a clap value error, without clap's usage decoration.
fn clap_reason(err: &clap::Error) -> String {
    use std::error::Error as _;
    match err.source() {
        Some(source) => source.to_string(),
        None => err
            .to_string()
            .lines()
            .next()
            .unwrap_or("invalid value")
            .trim_start_matches("error: ")
            .to_owned(),
    }
}

/// "; did you mean `x`?" for a key one or two edits from a real one.
fn hint(command: &clap::Command, key: &str) -> String {
    settings(command)
        .filter_map(|arg| arg.get_long())
        .map(|long| (edit_distance(key, long), long))
        .filter(|(distance, _)| *distance <= 2)
        .min()
        .map(|(_, long)| format!("; did you mean `{long}`?"))
        .unwrap_or_else(|| "; `tidings config example` lists every key".into())
}

pub(super) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous + usize::from(ca != *cb);
            previous = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(previous + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Origin;

    fn parse_file(text: &str) -> Result<ServeArgs, FileError> {
        let path = std::env::temp_dir().join(format!(
            "tidings-unit-{}-{:x}.toml",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::write(&path, text).expect("temp file");
        let parsed = check_file(&path);
        let _ = std::fs::remove_file(&path);
        parsed
    }

    /// A valid value unlike the default, for each key.
    fn sample(key: &str, kind: Kind) -> &'static str {
        match (key, kind) {
            ("listen", _) => "\"127.0.0.1:9\"",
            ("redis-url", _) => "\"redis://127.0.0.1:1\"",
            ("token-hmac-secret", _) => "\"a-secret-of-at-least-thirty-two-bytes\"",
            ("token-public-key", _) => "[\"/keys/a.pem\", \"/keys/b.pem\"]",
            ("allowed-origin", _) => "[\"https://a.example\"]",
            ("channel-rule", _) => "{ subscribe = \"authenticated\", publish = false }",
            ("namespace", _) => "{ room = { presence = true, join-leave = \"client\" } }",
            ("log", _) => "\"debug\"",
            ("log-format", _) => "\"json\"",
            (_, Kind::Bool) => "true",
            (_, Kind::Integer) => "7",
            (_, Kind::Size) => "\"3MiB\"",
            (_, Kind::Duration) => "\"3s\"",
            (_, Kind::Text) => "\"x\"",
        }
    }

    #[test]
    fn every_key_of_the_file_reaches_its_setting() {
        let default = format!("{:?}", parse_file("").expect("an empty file is valid"));
        let command = Cli::command();
        for arg in settings(&command) {
            let key = arg.get_long().expect("settings have long names");
            let text = format!("{key} = {}\n", sample(key, kind(arg)));
            let mut parsed = parse_file(&text).unwrap_or_else(|err| panic!("{text}: {err}"));
            assert!(
                matches!(parsed.origins.get(key), Some(Origin::File { key: k, .. }) if k == key),
                "{text}: the file is not its origin"
            );
            parsed.origins = Default::default();
            assert_ne!(format!("{parsed:?}"), default, "{text} changed nothing");
        }
    }

    #[test]
    fn a_namespace_table_becomes_the_flag_form() {
        let args =
            parse_file("[namespace.room]\npresence = true\nhistory-size = 5\n").expect("valid");
        assert_eq!(args.namespaces, ["room:history-size=5,presence=true"]);
    }

    #[test]
    fn suggestions_are_for_near_misses_only() {
        let command = Cli::command();
        assert!(hint(&command, "pingg-interval").contains("`ping-interval`"));
        assert!(hint(&command, "colour").contains("config example"));
    }
}
