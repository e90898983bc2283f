//! Processes a test starts: their output goes to a log file, and they are stopped by process id
//! (the `Child` is never reaped before it is stopped, so the id cannot name another process).

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Polls `f` every 100 ms until it is true; fails the test naming `what` after `timeout`.
#[track_caller]
pub fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// A child process whose output goes to a log file; killed by process id on drop.
pub struct Proc {
    child: Child,
    pub log: PathBuf,
}

impl Proc {
    /// Starts `cmd` with stdin closed and stdout and stderr to `log` (created or truncated).
    #[track_caller]
    pub fn spawn(mut cmd: Command, log: impl Into<PathBuf>) -> Proc {
        let log = log.into();
        let out = std::fs::File::create(&log)
            .unwrap_or_else(|e| panic!("creating {}: {e}", log.display()));
        let err = out.try_clone().expect("clone a log file handle");
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {:?}: {e}", cmd.get_program()));
        Proc { child, log }
    }

    /// [`Proc::spawn`] of `program args…` with extra environment variables.
    #[track_caller]
    pub fn spawn_program(
        program: impl AsRef<OsStr>,
        args: &[&str],
        log: impl Into<PathBuf>,
        envs: &[(&str, &str)],
    ) -> Proc {
        let mut cmd = Command::new(program);
        cmd.args(args).envs(envs.iter().copied());
        Proc::spawn(cmd, log)
    }

    /// Takes charge of a child started with stdio of the caller's choosing; `log` is where its
    /// output went, if anywhere.
    pub fn adopt(child: Child, log: impl Into<PathBuf>) -> Proc {
        Proc {
            child,
            log: log.into(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends signal `sig` (a name such as `TERM`, `STOP`, `INT`) to the process.
    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args(["-s", sig, &self.child.id().to_string()])
            .status();
    }

    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Whether the process still runs.
    pub fn running(&mut self) -> bool {
        self.try_wait().is_none()
    }

    #[track_caller]
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(s) = self.try_wait() {
                return s;
            }
            if start.elapsed() > timeout {
                panic!(
                    "process {} did not exit within {timeout:?}; log:\n{}",
                    self.pid(),
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then SIGKILL if it lingers past 10 s.
    pub fn stop(&mut self) {
        self.stop_within(Duration::from_secs(10));
    }

    /// SIGTERM, then SIGKILL if it lingers past `grace`.
    pub fn stop_within(&mut self, grace: Duration) {
        if self.try_wait().is_some() {
            return;
        }
        self.signal("TERM");
        let start = Instant::now();
        while start.elapsed() < grace {
            if self.try_wait().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill9();
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether a TCP socket listens on `port` in the network namespace the process runs in (for
    /// a program started with `ip netns exec` or `nsenter`, that namespace).
    pub fn listens_on_tcp(&self, port: u16) -> bool {
        let want = format!(":{port:04X}");
        ["tcp", "tcp6"].iter().any(|table| {
            std::fs::read_to_string(format!("/proc/{}/net/{table}", self.pid()))
                .unwrap_or_default()
                .lines()
                .skip(1)
                .any(|line| {
                    let cols: Vec<&str> = line.split_whitespace().collect();
                    // Columns: sl local_address rem_address st …
                    cols.len() > 3 && cols[1].ends_with(&want) && cols[3] == "0A"
                })
        })
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}
