//! The files in `deploy/` checked against the binary they deploy. No container engine runs
//! where these tests run, so nothing else would notice a renamed flag: every `--flag` and
//! `TIDINGS_*` variable the files set must be one that `tidings config reference` lists, every
//! stop timeout must outlast the default drain window plus the default shutdown timeout, and
//! the balancer must check `/readyz` on each node at the port the container listens on.
//!
//! The files are read line by line, not parsed (no YAML crate here): comments are skipped, and
//! in the compose file the services that run another image (Redis, HAProxy) are left out.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::Duration;

/// What the binary accepts, from `tidings config reference` (docs/config.md is its output).
struct Contract {
    flags: BTreeSet<String>,
    env: BTreeSet<String>,
    /// The default drain window plus the default shutdown timeout: the longest a stop takes.
    stop_budget: Duration,
}

impl Contract {
    fn of_the_binary() -> Self {
        let output = Command::new(env!("CARGO_BIN_EXE_tidings"))
            .args(["config", "reference"])
            .env_remove("TIDINGS_CONFIG")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "config reference: {stderr}");
        let reference = String::from_utf8(output.stdout).unwrap();
        // `--config` is the one setting outside the table; the text above it names its twin.
        assert!(
            reference.contains("`--config FILE` (`TIDINGS_CONFIG`)"),
            "{reference}"
        );
        let mut flags = BTreeSet::from(["--config".to_owned()]);
        let mut env = BTreeSet::from(["TIDINGS_CONFIG".to_owned()]);
        let mut stop_budget = Duration::ZERO;
        let mut stop_parts = 0;
        // | `key` | type | `default` | `--flag` | `TIDINGS_NAME` | meaning |
        for row in reference.lines().filter(|line| line.starts_with("| `")) {
            let cells: Vec<&str> = row
                .split('|')
                .map(|cell| cell.trim().trim_matches('`'))
                .collect();
            let &[_, key, _, default, flag, name, ..] = &cells[..] else {
                panic!("a reference row with too few cells: {row}");
            };
            assert!(
                flag.starts_with("--") && name.starts_with("TIDINGS_"),
                "{row}"
            );
            flags.insert(flag.to_owned());
            env.insert(name.to_owned());
            if key == "drain-window" || key == "shutdown-timeout" {
                stop_budget += humantime::parse_duration(default).unwrap();
                stop_parts += 1;
            }
        }
        assert!(
            flags.len() > 30,
            "too few flags in the reference:\n{reference}"
        );
        assert_eq!(
            stop_parts, 2,
            "drain-window or shutdown-timeout not in the reference"
        );
        Self {
            flags,
            env,
            stop_budget,
        }
    }

    /// Fails unless every flag and variable a file sets is one of the binary's, and the file
    /// leaves the two settings that `stop_budget` holds at their defaults.
    fn check(&self, file: &str, flags: &[String], env: &[String]) {
        let unknown: Vec<&String> = flags
            .iter()
            .filter(|flag| !self.flags.contains(flag.as_str()))
            .chain(env.iter().filter(|name| !self.env.contains(name.as_str())))
            .collect();
        assert!(
            unknown.is_empty(),
            "deploy/{file} uses settings that tidings does not have: {unknown:?}"
        );
        for stop_setting in [
            "--drain-window",
            "--shutdown-timeout",
            "TIDINGS_DRAIN_WINDOW",
            "TIDINGS_SHUTDOWN_TIMEOUT",
        ] {
            assert!(
                !flags.iter().chain(env).any(|used| used == stop_setting),
                "deploy/{file} sets {stop_setting}: its stop timeouts are checked here against \
                 the default; check them against the new value instead"
            );
        }
    }
}

/// The lines of `deploy/NAME` that are not comments (`#`, or `;` in a systemd unit), each
/// without a trailing ` # comment`.
fn settings_of(name: &str) -> String {
    let path = format!("{}/deploy/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{path}: {err}"));
    let mut settings = String::new();
    for line in text.lines() {
        let body = line.trim_start();
        if body.starts_with('#') || body.starts_with(';') {
            continue;
        }
        settings.push_str(line.split(" #").next().unwrap_or(line));
        settings.push('\n');
    }
    settings
}

/// The `--flag` words of `text`, each without an `=value`.
fn flags_in(text: &str) -> Vec<String> {
    text.split(|c: char| c.is_whitespace() || "\"',[]".contains(c))
        .filter(|word| {
            word.strip_prefix("--")
                .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_lowercase()))
        })
        .map(|word| word.split('=').next().unwrap_or(word).to_owned())
        .collect()
}

/// The `TIDINGS_*` names in `text`.
fn env_names_in(text: &str) -> Vec<String> {
    text.match_indices("TIDINGS_")
        .map(|(start, _)| {
            text[start..]
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect::<String>()
        })
        .filter(|name| name.len() > "TIDINGS_".len())
        .collect()
}

/// The arguments of every `NAME …` instruction of a Dockerfile (each on one line).
fn instructions<'a>(dockerfile: &'a str, name: &str) -> Vec<&'a str> {
    dockerfile
        .lines()
        .filter_map(|line| line.trim_start().strip_prefix(name))
        .filter(|rest| rest.starts_with(' '))
        .map(str::trim)
        .collect()
}

/// The port the image listens on: it sets `TIDINGS_LISTEN` to all interfaces at the one port
/// it exposes.
fn container_port(dockerfile: &str) -> String {
    let exposed = instructions(dockerfile, "EXPOSE");
    let [port] = exposed[..] else {
        panic!("deploy/Dockerfile exposes {exposed:?}, not one port");
    };
    let listen: Vec<&str> = instructions(dockerfile, "ENV")
        .into_iter()
        .filter_map(|env| env.strip_prefix("TIDINGS_LISTEN="))
        .collect();
    assert_eq!(
        listen,
        [format!("0.0.0.0:{port}")],
        "deploy/Dockerfile must listen on all interfaces at the port it exposes"
    );
    port.to_owned()
}

#[test]
fn the_dockerfile_runs_the_binary_as_a_user_on_the_port_it_exposes() {
    let contract = Contract::of_the_binary();
    let dockerfile = settings_of("Dockerfile");
    container_port(&dockerfile);
    let entrypoint = instructions(&dockerfile, "ENTRYPOINT");
    assert_eq!(entrypoint, [r#"["/usr/local/bin/tidings"]"#]);
    assert!(
        instructions(&dockerfile, "COPY")
            .iter()
            .any(|copy| copy.ends_with(" /usr/local/bin/tidings")),
        "nothing copies the binary to /usr/local/bin/tidings"
    );
    let mut invocation = entrypoint.join(" ");
    for cmd in instructions(&dockerfile, "CMD") {
        invocation.push(' ');
        invocation.push_str(cmd);
    }
    contract.check(
        "Dockerfile",
        &flags_in(&invocation),
        &env_names_in(&dockerfile),
    );
    let user = instructions(&dockerfile, "USER")
        .last()
        .copied()
        .unwrap_or("root");
    let uid = user.split(':').next().unwrap_or(user);
    assert!(
        uid.parse::<u32>().is_ok_and(|uid| uid != 0),
        "the image runs as {user}: it should be a numeric user other than root"
    );
}

/// The compose file cut before each key of its two top levels (`services:`, `  redis:`, and
/// the keys of a top-level `x-…:` block), so that each service is a section of its own.
fn compose_sections(compose: &str) -> Vec<Vec<&str>> {
    let mut sections: Vec<Vec<&str>> = vec![Vec::new()];
    for line in compose.lines() {
        let body = line.trim_start();
        let indent = line.len() - body.len();
        if indent <= 2 && !body.is_empty() && !body.starts_with('-') && body.contains(':') {
            sections.push(Vec::new());
        }
        sections.last_mut().unwrap().push(line);
    }
    sections
}

/// Whether a compose section runs another program's image (Redis, the balancer).
fn runs_another_image(section: &[&str]) -> bool {
    section
        .iter()
        .filter_map(|line| line.trim().strip_prefix("image:"))
        .any(|image| !image.trim().trim_matches('"').starts_with("tidings"))
}

#[test]
fn the_compose_nodes_share_redis_with_real_settings_and_outlast_their_drain() {
    let contract = Contract::of_the_binary();
    let compose = settings_of("compose.yaml");
    let mut flags = Vec::new();
    let mut grace_periods = Vec::new();
    for section in compose_sections(&compose) {
        if runs_another_image(&section) {
            continue;
        }
        for line in section {
            flags.extend(flags_in(line));
            if let Some(period) = line.trim().strip_prefix("stop_grace_period:") {
                let period = period.trim().trim_matches('"');
                grace_periods.push(humantime::parse_duration(period).unwrap());
            }
        }
    }
    let env = env_names_in(&compose);
    contract.check("compose.yaml", &flags, &env);
    assert!(
        env.iter().any(|name| name == "TIDINGS_REDIS_URL") || flags.contains(&"--redis-url".into()),
        "the compose nodes do not share a Redis: each would be alone with its memory broker"
    );
    assert!(
        !grace_periods.is_empty(),
        "the compose nodes have no stop_grace_period (Docker's default is 10 s)"
    );
    for period in grace_periods {
        assert!(
            period > contract.stop_budget,
            "stop_grace_period {period:?} does not outlast the drain window and the shutdown \
             timeout ({:?})",
            contract.stop_budget
        );
    }
}

/// A systemd time span: bare seconds, `infinity`, or units (`15s`, `1min 30s`).
fn systemd_span(span: &str) -> Duration {
    let span = span.trim();
    if span == "infinity" {
        return Duration::MAX;
    }
    match span.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => humantime::parse_duration(span).unwrap(),
    }
}

#[test]
fn the_systemd_unit_starts_the_binary_with_real_settings_and_outlasts_its_drain() {
    let contract = Contract::of_the_binary();
    let unit = settings_of("tidings.service");
    let exec: Vec<&str> = unit
        .lines()
        .filter_map(|line| line.trim().strip_prefix("ExecStart="))
        .collect();
    let [exec] = exec[..] else {
        panic!(
            "deploy/tidings.service has {} ExecStart lines, not one",
            exec.len()
        );
    };
    let mut words = exec
        .trim_start_matches(['-', '@', ':', '+', '!'])
        .split_whitespace();
    assert_eq!(words.next(), Some("/usr/local/bin/tidings"));
    let arguments: Vec<&str> = words.collect();
    contract.check(
        "tidings.service",
        &flags_in(&arguments.join(" ")),
        &env_names_in(&unit),
    );
    let stop = unit
        .lines()
        .filter_map(|line| line.trim().strip_prefix("TimeoutStopSec="))
        .next_back()
        .expect("deploy/tidings.service sets no TimeoutStopSec (systemd's default is 90 s)");
    assert!(
        systemd_span(stop) > contract.stop_budget,
        "TimeoutStopSec={stop} does not outlast the drain window and the shutdown timeout ({:?})",
        contract.stop_budget
    );
}

#[test]
fn the_balancer_checks_readyz_on_each_compose_node_at_the_port_it_listens_on() {
    let port = container_port(&settings_of("Dockerfile"));
    let compose = settings_of("compose.yaml");
    let haproxy = settings_of("haproxy.cfg");
    let lines: Vec<&str> = haproxy.lines().map(str::trim).collect();
    assert!(
        lines.contains(&"option httpchk")
            && lines.contains(&"http-check send meth GET uri /readyz"),
        "deploy/haproxy.cfg does not check /readyz"
    );
    let checks_all = lines.iter().any(|line| {
        line.starts_with("default-server ") && line.split_whitespace().any(|word| word == "check")
    });
    let servers: Vec<&str> = lines
        .iter()
        .filter_map(|line| line.strip_prefix("server "))
        .collect();
    assert!(
        servers.len() >= 2,
        "deploy/haproxy.cfg balances {servers:?}"
    );
    for server in servers {
        let address = server.split_whitespace().nth(1).unwrap_or_default();
        let (host, server_port) = address.rsplit_once(':').unwrap_or((address, ""));
        assert_eq!(
            server_port, port,
            "server {server}: not the port the nodes listen on"
        );
        assert!(
            compose
                .lines()
                .any(|line| line.starts_with(&format!("  {host}:"))),
            "server {server}: no service {host} in deploy/compose.yaml"
        );
        assert!(
            checks_all || server.split_whitespace().any(|word| word == "check"),
            "server {server} is not health-checked"
        );
    }
}
