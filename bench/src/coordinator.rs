//! The words a `--processes` parent and its children exchange, and the child's side of that
//! exchange. A leaf: the scenarios (which run in a child) and `processes` (the parent) both use
//! it, so neither needs the other's module for it.
//!
//! ```text
//! child  → parent   ready          connected (idle: connected and settled)
//! parent → child    start MS       every child is ready
//! child  → parent   measured       window over
//! parent → child    stop           servers sampled
//! child  → parent   [report]       JSON, to end of file
//! ```

use anyhow::{Context, Result, ensure};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};

pub const READY: &str = "ready";
pub const START: &str = "start ";
pub const MEASURED: &str = "measured";
pub const STOP: &str = "stop";

/// The child's side: talks to the parent over stdout (one word a line) and stdin.
#[derive(Debug)]
pub struct Coordinator {
    parent: tokio::sync::Mutex<Lines<BufReader<tokio::io::Stdin>>>,
}

impl Coordinator {
    pub fn stdio() -> Self {
        Self {
            parent: tokio::sync::Mutex::new(BufReader::new(tokio::io::stdin()).lines()),
        }
    }

    /// Says `word` to the parent and waits for its answer.
    async fn tell(&self, word: &str) -> Result<String> {
        {
            use std::io::Write;
            let mut stdout = std::io::stdout().lock();
            writeln!(stdout, "{word}")
                .and_then(|()| stdout.flush())
                .context("writing to the parent process")?;
        }
        self.parent
            .lock()
            .await
            .next_line()
            .await
            .context("reading from the parent process")?
            .with_context(|| format!("the parent process went away after {word:?}"))
    }

    /// Connected: returns the agreed start (ms since the Unix epoch).
    pub async fn ready(&self) -> Result<u64> {
        let answer = self.tell(READY).await?;
        answer
            .strip_prefix(START)
            .and_then(|ms| ms.parse().ok())
            .with_context(|| format!("expected `{START}MS` from the parent, got {answer:?}"))
    }

    /// Window over: returns once the parent lets the connections go.
    pub async fn measured(&self) -> Result<()> {
        let answer = self.tell(MEASURED).await?;
        ensure!(
            answer == STOP,
            "expected {STOP:?} from the parent, got {answer:?}"
        );
        Ok(())
    }
}
