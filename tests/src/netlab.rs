//! A small network of Linux network namespaces for tests that run real
//! `concord run` processes on a real (virtual) network: a "switch"
//! namespace holding a bridge, and one namespace per node joined to the
//! bridge by a veth pair. Nothing is created in the root namespace, and
//! every namespace is deleted when the [`Lab`] is dropped, on panic too.
//!
//! It never sends a packet anywhere but between the namespaces it made (or
//! loopback): node addresses are in 10.77.0.0/24, which exists only inside
//! the lab. [`probe`] says whether namespaces (and `netem`) work here.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::Run;

/// Every namespace a lab creates starts with this, then the creating
/// process's pid, so stale ones from crashed runs can be found and removed.
const PREFIX: &str = "cnlab-";
/// The subnet of the lab's nodes: 10.77.0.1, 10.77.0.2, ...
const SUBNET: &str = "10.77.0";

/// What this machine allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Capability {
    /// Namespaces and veth pairs work; `netem` qdiscs too when `netem`.
    Namespaces { netem: bool },
    /// No namespaces here, and why.
    Loopback { why: String },
}

/// Finds out whether this process can create network namespaces and add a
/// `netem` qdisc, by trying both in a throwaway namespace.
pub fn probe() -> Capability {
    match Command::new("ip").arg("-V").output() {
        Ok(o) if o.status.success() => {}
        _ => {
            return Capability::Loopback {
                why: "iproute2's `ip` is not installed".into(),
            };
        }
    }
    remove_stale();
    let ns = format!("{PREFIX}{}-probe", std::process::id());
    let added = ip(&["netns", "add", &ns]);
    if let Err(e) = added {
        return Capability::Loopback {
            why: format!("cannot create a network namespace ({e}); this needs root"),
        };
    }
    let netem = ip(&["-n", &ns, "link", "set", "lo", "up"]).is_ok()
        && run(Command::new("ip").args([
            "netns", "exec", &ns, "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay",
            "1ms",
        ]))
        .is_ok();
    let _ = ip(&["netns", "del", &ns]);
    Capability::Namespaces { netem }
}

/// The namespaces of one test run. Dropping it deletes them all; stop the
/// processes running in them first (a namespace lives on while a process
/// is in it).
#[derive(Debug)]
pub struct Lab {
    prefix: String,
    switch: String,
    nodes: Vec<String>,
}

impl Lab {
    /// A switch and `count` node namespaces, each node's `eth0` at
    /// [`Lab::ip`] on the switch's bridge, `lo` up; `netem`, when given
    /// (e.g. `delay 30ms 20ms loss 5%`), shapes every node's `eth0`.
    pub fn new(count: usize, netem: Option<&str>) -> Result<Self, String> {
        remove_stale();
        let prefix = format!("{PREFIX}{}-", std::process::id());
        let lab = Self {
            switch: format!("{prefix}sw"),
            nodes: (0..count).map(|i| format!("{prefix}n{i}")).collect(),
            prefix,
        };
        // From here on, a failure drops `lab`, which deletes what exists.
        ip(&["netns", "add", &lab.switch])?;
        ip(&["-n", &lab.switch, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &lab.switch, "link", "set", "br0", "up"])?;
        for (i, ns) in lab.nodes.iter().enumerate() {
            let port = Self::port(i);
            ip(&["netns", "add", ns])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&[
                "-n",
                &lab.switch,
                "link",
                "add",
                &port,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                ns,
            ])?;
            ip(&["-n", &lab.switch, "link", "set", &port, "master", "br0"])?;
            ip(&["-n", &lab.switch, "link", "set", &port, "up"])?;
            let addr = format!("{}/24", lab.ip(i));
            ip(&["-n", ns, "addr", "add", &addr, "dev", "eth0"])?;
            ip(&["-n", ns, "link", "set", "eth0", "up"])?;
            if let Some(spec) = netem {
                let mut tc = Command::new("ip");
                tc.args(["netns", "exec", ns, "tc", "qdisc", "add", "dev", "eth0"])
                    .args(["root", "netem"])
                    .args(spec.split_whitespace());
                run(&mut tc)?;
            }
        }
        Ok(lab)
    }

    /// The name of node `i`'s namespace.
    pub fn ns(&self, i: usize) -> &str {
        &self.nodes[i]
    }

    /// Node `i`'s address on the lab network.
    pub fn ip(&self, i: usize) -> String {
        format!("{SUBNET}.{}", i + 1)
    }

    /// Cuts node `i`'s link: its switch port goes down, so nothing passes
    /// either way (connections stay open, as over a real outage).
    pub fn cut(&self, i: usize) -> Result<(), String> {
        ip(&["-n", &self.switch, "link", "set", &Self::port(i), "down"])
    }

    /// Restores node `i`'s link.
    pub fn restore(&self, i: usize) -> Result<(), String> {
        ip(&["-n", &self.switch, "link", "set", &Self::port(i), "up"])
    }

    /// The switch-side end of node `i`'s veth pair.
    fn port(i: usize) -> String {
        format!("v{i}")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in list() {
            if ns.starts_with(&self.prefix) {
                let _ = ip(&["netns", "del", &ns]);
            }
        }
    }
}

/// The names of the network namespaces `ip netns list` shows.
fn list() -> Vec<String> {
    Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| l.split_whitespace().next())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Deletes lab namespaces whose creating process is gone (a crashed run).
fn remove_stale() {
    for ns in list() {
        let Some(pid) = ns
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            let _ = ip(&["netns", "del", &ns]);
        }
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    run(Command::new("ip").args(args))
}

fn run(command: &mut Command) -> Result<(), String> {
    let out = command
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {command:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Runs `command` to its end, or kills it after `limit` and returns `None`.
pub fn run_bounded(mut command: Command, limit: Duration) -> Option<Run> {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    // Reading both pipes to the end needs its own thread to be bounded.
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(Ok(output)) => Some(output.into()),
        Ok(Err(e)) => panic!("cannot wait for {command:?}: {e}"),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            let _ = rx.recv_timeout(Duration::from_secs(10));
            None
        }
    }
}

/// The peak resident memory (`VmHWM`) of process `pid`, in KiB.
pub fn peak_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}
