//! Packet captures with tcpdump, written packet by packet to a pcap file.
//!
//! A capture is read only once it has provably caught up: [`Capture::sync`] sends a datagram
//! of the kit's own (UDP to the network's broadcast address, port 9) after the traffic of
//! interest and waits until the file holds it, so every frame that crossed before it is in the
//! file too. [`Pcap::packets`] leaves those datagrams out.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::netns::{Netns, Network};
use crate::proc::{Proc, wait_until};
use crate::require;

/// UDP port of the kit's sync datagrams (discard).
const SYNC_PORT: u16 = 9;
const SYNC_PREFIX: &str = "corral-testkit-sync-";

pub struct Capture {
    proc: Proc,
    pcap: PathBuf,
}

impl Capture {
    /// Captures on `interface` of `ns` (the root namespace if `None`) with the tcpdump filter
    /// `filter` (words, e.g. `["udp", "port", "4789"]`), into `pcap`; returns once tcpdump
    /// listens. Its log is `pcap` with `.log` appended.
    #[track_caller]
    pub fn start(ns: Option<&Netns>, interface: &str, pcap: &Path, filter: &[&str]) -> Capture {
        require::root("to capture packets");
        require::tool("tcpdump", "tcpdump");
        let mut cmd = match ns {
            Some(ns) => ns.command("tcpdump"),
            None => Command::new("tcpdump"),
        };
        // -Z root: tcpdump would otherwise drop to its own user and fail to write the file.
        cmd.args([
            "-Z",
            "root",
            "--immediate-mode",
            "-U",
            "-n",
            "-i",
            interface,
            "-w",
        ])
        .arg(pcap)
        .args(filter);
        let mut log = pcap.as_os_str().to_owned();
        log.push(".log");
        let mut proc = Proc::spawn(cmd, PathBuf::from(log));
        wait_until(Duration::from_secs(10), "tcpdump to listen", || {
            assert!(proc.running(), "tcpdump exited: {}", proc.log_text());
            proc.log_text().contains("listening on")
        });
        Capture {
            proc,
            pcap: pcap.to_owned(),
        }
    }

    /// The bytes captured so far.
    pub fn bytes(&self) -> Vec<u8> {
        std::fs::read(&self.pcap).unwrap_or_default()
    }

    /// Whether the bytes captured so far hold `needle`.
    pub fn contains(&self, needle: &[u8]) -> bool {
        contains(&self.bytes(), needle)
    }

    /// Sends a sync datagram from `from` (a namespace on `net`) to `net`'s broadcast address
    /// and waits until the capture holds it. The capture's filter must let it through (UDP to
    /// port 9).
    #[track_caller]
    pub fn sync(&self, net: &Network, from: &Netns) {
        static N: AtomicU32 = AtomicU32::new(0);
        let payload = format!(
            "{SYNC_PREFIX}{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let socket = from.udp_socket();
        socket
            .set_broadcast(true)
            .unwrap_or_else(|e| panic!("SO_BROADCAST: {e}"));
        let to = format!("{}:{SYNC_PORT}", net.broadcast());
        // Resent until seen: the first may wait on nothing, but a frame can be lost to a full
        // capture buffer.
        wait_until(
            Duration::from_secs(10),
            "the capture to catch up (the sync datagram)",
            || {
                let _ = socket.send_to(payload.as_bytes(), &to);
                std::thread::sleep(Duration::from_millis(50));
                self.contains(payload.as_bytes())
            },
        );
    }

    /// Stops tcpdump (SIGINT: it writes out what it holds) and returns the capture.
    #[track_caller]
    pub fn stop(mut self) -> Pcap {
        self.proc.signal("INT");
        self.proc.wait_exit(Duration::from_secs(10));
        Pcap {
            bytes: std::fs::read(&self.pcap)
                .unwrap_or_else(|e| panic!("reading {}: {e}", self.pcap.display())),
            path: self.pcap.clone(),
        }
    }
}

/// A finished capture.
pub struct Pcap {
    pub path: PathBuf,
    pub bytes: Vec<u8>,
}

impl Pcap {
    pub fn contains(&self, needle: &[u8]) -> bool {
        contains(&self.bytes, needle)
    }

    /// `tcpdump -nn -r` of the file, one line per packet, without the kit's sync datagrams.
    #[track_caller]
    pub fn packets(&self) -> Vec<String> {
        let out = Command::new("tcpdump")
            .arg("-nn")
            .arg("-r")
            .arg(&self.path)
            .output()
            .unwrap_or_else(|e| panic!("tcpdump -r: {e}"));
        assert!(
            out.status.success(),
            "tcpdump -r {}: {}",
            self.path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let sync = format!(".255.{SYNC_PORT}: UDP");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.contains(&sync))
            .map(str::to_owned)
            .collect()
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}
