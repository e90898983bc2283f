//! Prerequisites of a test: each check passes or fails the test with a message that names what
//! is missing and how to get it. No test skips: a test that cannot run fails, in CI and on a
//! developer's machine alike. `bash scripts/test.sh` installs and starts everything the suite
//! needs on Debian 12.

use std::process::{Command, Stdio};

/// The local image the container tests run (`scripts/test-image.sh` builds it; nothing is
/// pulled).
pub const TEST_IMAGE: &str = "corral-test/busybox:latest";

/// Fails the test: `what` is missing; `how` says how to get it.
#[track_caller]
pub fn missing(what: &str, how: &str) -> ! {
    panic!(
        "missing test prerequisite: {what}\n  to get it: {how}\n  (tests never skip: `bash scripts/test.sh` installs and starts everything the suite needs)"
    )
}

/// Whether `program` can be found on `PATH`.
pub fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            std::fs::metadata(dir.join(program)).is_ok_and(|m| {
                m.is_file()
                    && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
            })
        })
    })
}

/// `program` is installed (from the Debian package `package`).
#[track_caller]
pub fn tool(program: &str, package: &str) {
    if !on_path(program) {
        missing(
            &format!("the `{program}` command"),
            &format!(
                "run `bash scripts/test.sh`, which installs it, or `apt-get install -y {package}`"
            ),
        );
    }
}

/// The test runs as root (network namespaces, nftables, a dockerd of its own).
#[track_caller]
pub fn root(why: &str) {
    if !rustix::process::geteuid().is_root() {
        missing(
            &format!("root ({why})"),
            "run the tests as root, e.g. `sudo bash scripts/test.sh`",
        );
    }
}

/// Root and iproute2: the test makes network namespaces.
#[track_caller]
pub fn netns() {
    root("to make network namespaces");
    tool("ip", "iproute2");
    tool("nsenter", "util-linux");
}

/// `python3` can import `module`; `install` is the command that installs it.
#[track_caller]
pub fn python_module(module: &str, install: &str) {
    tool("python3", "python3");
    let ok = Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        missing(
            &format!("the Python module `{module}`"),
            &format!("run `bash scripts/test.sh`, which installs it, or `{install}`"),
        );
    }
}

/// A dockerd answers where the docker CLI looks (`DOCKER_HOST`, else /var/run/docker.sock) and
/// holds [`TEST_IMAGE`].
#[track_caller]
pub fn docker_with_test_image() {
    tool("docker", "docker.io");
    let out = Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Id}}", TEST_IMAGE])
        .output();
    let why = match out {
        Ok(o) if o.status.success() => return,
        Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_owned(),
        Err(e) => e.to_string(),
    };
    let at = std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into());
    missing(
        &format!("a running dockerd at {at} with the image {TEST_IMAGE} (docker said: {why})"),
        "run `bash scripts/test.sh`, which installs and starts both; or start dockerd and run `bash scripts/test-image.sh`",
    );
}
