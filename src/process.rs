//! Child processes whose output is kept, killed on drop.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::unique;

/// A child process killed (SIGKILL) and reaped on drop.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

/// Where [`Process`] writes the output of every process it starts:
/// `$FOLDCACHE_TEST_LOGS`, or `target/test-logs` in the workspace.
pub fn test_log_dir() -> PathBuf {
    std::env::var_os("FOLDCACHE_TEST_LOGS").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-logs"),
        PathBuf::from,
    )
}

impl Process {
    /// Starts `program` with `args`. Its stdout and stderr go to a file of
    /// their own under [`test_log_dir`] (see [`Process::log_path`]) and to
    /// the test's stderr, each line prefixed with `[name port]`, so that the
    /// interleaved output of concurrent tests says which process wrote what.
    pub fn spawn(name: &str, program: &Path, args: &[&str], env: &[(&str, &str)]) -> Result<Self> {
        Self::spawn_in(&std::env::temp_dir(), name, program, args, env)
    }

    /// [`Process::spawn`] with `cwd` as the working directory.
    pub fn spawn_in(
        cwd: &Path,
        name: &str,
        program: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Self> {
        let dir = test_log_dir();
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let log = dir.join(format!("{}.log", unique(&format!("{name}-"))));
        let mut cmd = Command::new(program);
        cmd.args(args)
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {name} ({})", program.display()))?;
        let file = std::sync::Arc::new(std::sync::Mutex::new(
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?,
        ));
        let tag = format!("[{name} {}]", child.id());
        if let Some(out) = child.stdout.take() {
            tee(out, tag.clone(), file.clone());
        }
        if let Some(err) = child.stderr.take() {
            tee(err, tag, file);
        }
        Ok(Self {
            name: name.into(),
            child: Some(child),
            log,
        })
    }

    /// The file holding everything this process wrote.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// SIGKILL now: the crash that recovery must survive.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait up to `grace` for a clean exit; returns whether the
    /// process exited successfully in time.
    pub fn terminate(&mut self, grace: Duration) -> bool {
        let Some(mut c) = self.child.take() else {
            return false;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let start = Instant::now();
        while start.elapsed() < grace {
            if let Ok(Some(status)) = c.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        tracing::warn!(name = %self.name, "did not exit after SIGTERM; killing");
        let _ = c.kill();
        let _ = c.wait();
        false
    }

    /// Waits up to `timeout` for the process to exit by itself; returns
    /// whether it exited successfully (killing it on timeout).
    pub fn wait(&mut self, timeout: Duration) -> bool {
        let Some(mut c) = self.child.take() else {
            return false;
        };
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(status)) = c.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
        false
    }

    /// Sends a signal (`STOP`, `CONT`, `TERM`, ...) with kill(1).
    pub fn signal(&self, sig: &str) -> Result<()> {
        let Some(c) = self.child.as_ref() else {
            anyhow::bail!("{} is not running", self.name);
        };
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &c.id().to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -{sig} {} failed", self.name);
        Ok(())
    }

    /// The OS process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

fn tee(
    from: impl std::io::Read + Send + 'static,
    tag: String,
    file: std::sync::Arc<std::sync::Mutex<std::fs::File>>,
) {
    use std::io::{BufRead, Write};
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(from).lines() {
            let Ok(line) = line else { break };
            if let Ok(mut f) = file.lock() {
                let _ = writeln!(f, "{line}");
            }
            eprintln!("{tag} {line}");
        }
    });
}

/// utime + stime of `pid` in seconds (`/proc/PID/stat`, in clock ticks of
/// 1/100 s, Linux's USER_HZ).
pub fn cpu_secs(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the command name, which is in parentheses.
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let utime: f64 = f.get(11)?.parse().ok()?;
            let stime: f64 = f.get(12)?.parse().ok()?;
            Some((utime + stime) / 100.0)
        })
        .unwrap_or(0.0)
}
