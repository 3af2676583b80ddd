//! The data directory's layout and the node's configuration file.
//!
//! A data directory (mode 0700: its owner's alone) holds `identity.key`
//! (mode 0600), `concord.toml` and the sled store in `store/`. The config
//! file is parsed with unknown fields refused and validated once into
//! [`Config`].

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::genesis::MAX_NAME_LEN;

/// File name of the institution's key.
pub const KEY_FILE: &str = "identity.key";
/// File name of the configuration.
pub const CONFIG_FILE: &str = "concord.toml";
/// Folder of the sled store.
pub const STORE_DIR: &str = "store";

/// Errors reading or writing the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot access {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is invalid: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("institution name must be 1 to {MAX_NAME_LEN} bytes of text")]
    BadName,
}

/// Where a node keeps its files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn key_file(&self) -> PathBuf {
        self.root.join(KEY_FILE)
    }

    pub fn config_file(&self) -> PathBuf {
        self.root.join(CONFIG_FILE)
    }

    pub fn store_dir(&self) -> PathBuf {
        self.root.join(STORE_DIR)
    }

    /// Creates the directory (and its parents) if need be, then makes it
    /// its owner's alone ([`DataDir::restrict`]).
    pub fn create(&self) -> Result<(), ConfigError> {
        fs::create_dir_all(&self.root).map_err(|source| ConfigError::Io {
            path: self.root.clone(),
            source,
        })?;
        self.restrict()
    }

    /// Makes an existing directory its owner's alone (mode [`DIR_MODE`]):
    /// the store's files are created readable by all (sled does not say
    /// otherwise), so the directory is what keeps other local users out of
    /// the register, the key and the API token. A directory that group or
    /// others may enter is tightened, and the change logged. A directory
    /// that does not exist is left for the caller to report.
    pub fn restrict(&self) -> Result<(), ConfigError> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let io = |source| ConfigError::Io {
                path: self.root.clone(),
                source,
            };
            let mode = match fs::metadata(&self.root) {
                Ok(meta) => meta.permissions().mode() & 0o777,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(io(e)),
            };
            if mode & 0o077 != 0 {
                fs::set_permissions(&self.root, fs::Permissions::from_mode(DIR_MODE))
                    .map_err(io)?;
                tracing::warn!(
                    path = %self.root.display(),
                    was = format!("{mode:o}"),
                    "the data directory was open to other users; it is now 0700"
                );
            }
        }
        Ok(())
    }
}

/// The data directory's mode: only its owner may enter it.
pub const DIR_MODE: u32 = 0o700;

/// Where `concord run` listens when neither flags, environment nor config
/// say: TCP and QUIC on every interface, port 7411.
pub const DEFAULT_LISTEN: [&str; 2] = ["/ip4/0.0.0.0/tcp/7411", "/ip4/0.0.0.0/udp/7411/quic-v1"];
/// Where the local API listens by default: loopback, a port the OS picks
/// (the CLI finds it in `api.json`).
pub const DEFAULT_API: &str = "127.0.0.1:0";

/// The validated configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The institution's display name, as it appears in rosters and reports.
    pub name: String,
    pub network: NetworkSettings,
    pub web: WebSettings,
}

/// The `[web]` table: the read-only web view `concord run` serves.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebSettings {
    /// Serve the web view at all.
    pub enabled: bool,
    /// Its address; empty means [`crate::web::DEFAULT_WEB`].
    pub listen: Option<String>,
    /// Host names (or addresses) it answers to besides 127.0.0.1,
    /// localhost, [::1] and its listen address; any other `Host` header is
    /// refused (a defence against DNS rebinding). Lowercase, no port.
    pub hosts: Vec<String>,
}

impl Default for WebSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: None,
            hosts: Vec::new(),
        }
    }
}

/// The `[network]` table: how `concord run` joins the peer-to-peer network.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkSettings {
    /// libp2p listen addresses; empty means [`DEFAULT_LISTEN`].
    pub listen: Vec<String>,
    /// Peers to dial at start, each ending in `/p2p/<node id>`.
    pub bootstrap: Vec<String>,
    /// Discover peers on the local network with mDNS.
    pub mdns: bool,
    /// Address of the local API (loopback only); empty means [`DEFAULT_API`].
    pub api: Option<String>,
}

/// The file as written; every field is checked in [`Config::load`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    name: String,
    #[serde(default)]
    network: NetworkSettings,
    #[serde(default)]
    web: WebSettings,
}

impl Config {
    pub fn new(name: &str) -> Result<Self, ConfigError> {
        let name = name.trim();
        if name.is_empty() || name.len() > MAX_NAME_LEN || name.chars().any(char::is_control) {
            return Err(ConfigError::BadName);
        }
        Ok(Self {
            name: name.to_string(),
            network: NetworkSettings::default(),
            web: WebSettings::default(),
        })
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let file: ConfigFile = toml::from_str(&text).map_err(|e| ConfigError::Invalid {
            path: path.to_path_buf(),
            message: e.message().to_string(),
        })?;
        let mut config = Self::new(&file.name).map_err(|e| ConfigError::Invalid {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        config.network = file.network;
        config.web = file.web;
        config.web.hosts = config
            .web
            .hosts
            .iter()
            .map(|h| {
                crate::web::normalise_host(h).ok_or_else(|| ConfigError::Invalid {
                    path: path.to_path_buf(),
                    message: format!(
                        "[web] hosts: {} is not a host name or address without a port",
                        crate::clip::quote(h)
                    ),
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(config)
    }

    /// Writes a commented config file; refuses to replace an existing one.
    pub fn write_new(&self, path: &Path) -> Result<(), ConfigError> {
        let io = |source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        };
        let name = toml::Value::String(self.name.clone()).to_string();
        let text = format!(
            "# Concord node configuration.\n\
             # Written by `concord init`; see config/concord.example.toml in the source\n\
             # for every option. Command-line flags override environment variables,\n\
             # which override this file.\n\
             \n\
             # The institution's display name. Other nodes see the name recorded in the\n\
             # network's genesis; this one labels your own node in `concord id`.\n\
             name = {name}\n\
             \n\
             [network]\n\
             # Where this node listens for peers (libp2p multiaddrs). Default: TCP and\n\
             # QUIC on every interface, port 7411.\n\
             # listen = [\"/ip4/0.0.0.0/tcp/7411\", \"/ip4/0.0.0.0/udp/7411/quic-v1\"]\n\
             # Peers to dial at start, each ending in /p2p/<node id>. Addresses learned\n\
             # later are remembered, so a restart reconnects without these.\n\
             # bootstrap = [\"/ip4/192.0.2.10/tcp/7411/p2p/12D3KooW...\"]\n\
             # Discover peers on the local network with mDNS.\n\
             # mdns = false\n\
             # The local API for the CLI; loopback only, port 0 = chosen by the OS.\n\
             # api = \"127.0.0.1:0\"\n\
             \n\
             [web]\n\
             # The read-only web view (register, dialogue, history, network). It has no\n\
             # login: serve it beyond loopback only on a network you trust.\n\
             # enabled = true\n\
             # listen = \"127.0.0.1:0\"   # port 0 = chosen by the OS, printed at start\n\
             # Host names it answers to besides 127.0.0.1, localhost and its listen\n\
             # address (a page under any other name is refused: DNS rebinding).\n\
             # hosts = [\"concord.example.org\"]\n"
        );
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(io)?;
        file.write_all(text.as_bytes()).map_err(io)?;
        file.sync_all().map_err(io)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_config_reads_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(CONFIG_FILE);
        let config = Config::new("Tsinghua \"CISS\"").expect("name");
        config.write_new(&path).expect("write");
        assert_eq!(Config::load(&path).expect("load"), config);
        assert!(config.write_new(&path).is_err(), "never overwrites");
    }

    #[test]
    fn the_example_config_is_valid() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/concord.example.toml");
        let config = Config::load(&path).expect("the example config parses");
        assert_eq!(
            config.network.listen,
            DEFAULT_LISTEN.map(String::from).to_vec()
        );
        assert_eq!(config.network.api.as_deref(), Some(DEFAULT_API));
        assert!(!config.network.mdns);
        assert!(config.web.enabled);
        assert_eq!(config.web.listen.as_deref(), Some(crate::web::DEFAULT_WEB));
        assert!(config.web.hosts.is_empty());
    }

    #[test]
    fn web_hosts_are_lowercased_and_a_port_or_a_url_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(CONFIG_FILE);
        fs::write(
            &path,
            "name = \"A\"\n[web]\nhosts = [\"Concord.Example.org\", \"10.0.0.5\", \"[fe80::1]\"]\n",
        )
        .expect("write");
        let config = Config::load(&path).expect("load");
        assert_eq!(
            config.web.hosts,
            ["concord.example.org", "10.0.0.5", "[fe80::1]"]
        );
        for bad in [
            "concord.example.org:8080",
            "http://concord.example.org/",
            "a b",
        ] {
            fs::write(&path, format!("name = \"A\"\n[web]\nhosts = [\"{bad}\"]\n")).expect("write");
            let err = Config::load(&path).expect_err(bad).to_string();
            assert!(err.contains("[web] hosts"), "{bad}: {err}");
        }
    }

    #[test]
    fn unknown_fields_and_bad_names_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(CONFIG_FILE);
        fs::write(&path, "name = \"A\"\nnmae = \"typo\"\n").expect("write");
        let err = Config::load(&path).expect_err("unknown field").to_string();
        assert!(err.contains("nmae"), "{err}");
        fs::write(&path, "name = \"\"\n").expect("write");
        assert!(Config::load(&path).is_err());
    }
}
