//! The data directory's layout and the node's configuration file.
//!
//! A data directory holds `identity.key` (mode 0600), `concord.toml` and the
//! sled store in `store/`. The config file is parsed with unknown fields
//! refused and validated once into [`Config`].

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
}

/// The validated configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The institution's display name, as it appears in rosters and reports.
    pub name: String,
}

/// The file as written; every field is checked in [`Config::load`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    name: String,
}

impl Config {
    pub fn new(name: &str) -> Result<Self, ConfigError> {
        let name = name.trim();
        if name.is_empty() || name.len() > MAX_NAME_LEN || name.chars().any(char::is_control) {
            return Err(ConfigError::BadName);
        }
        Ok(Self {
            name: name.to_string(),
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
        Self::new(&file.name).map_err(|e| ConfigError::Invalid {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
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
             name = {name}\n"
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
