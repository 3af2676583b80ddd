//! `concord run`: the node as a daemon, until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use concord_node::config::{Config, DEFAULT_API, DEFAULT_LISTEN, DataDir};
use concord_node::faults::Faults;
use concord_node::network::Multiaddr;
use concord_node::node::{self, NodeConfig};
use concord_node::web::DEFAULT_WEB;

use crate::args::RunArgs;
use crate::output;

pub fn run(dir: &DataDir, args: RunArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(&dir.config_file())
        .with_context(|| format!("cannot start the node in {}", dir.root().display()))?;
    // Flags (and their environment variables) override the config file.
    let listen = first_non_empty(
        args.listen,
        config.network.listen,
        DEFAULT_LISTEN.iter().map(|s| s.to_string()).collect(),
    );
    let bootstrap = first_non_empty(args.bootstrap, config.network.bootstrap, Vec::new());
    let api: SocketAddr = match args.api {
        Some(addr) => addr,
        None => config
            .network
            .api
            .as_deref()
            .unwrap_or(DEFAULT_API)
            .parse()
            .context("[network] api in the config is not an address like 127.0.0.1:0")?,
    };
    if !api.ip().is_loopback() {
        bail!("the local API listens on loopback only; {api} is not a loopback address");
    }
    let web: Option<SocketAddr> = if args.no_web || (args.web.is_none() && !config.web.enabled) {
        None
    } else {
        Some(match args.web {
            Some(addr) => addr,
            None => config
                .web
                .listen
                .as_deref()
                .unwrap_or(DEFAULT_WEB)
                .parse()
                .context("[web] listen in the config is not an address like 127.0.0.1:7412")?,
        })
    };
    if let Some(addr) = web.filter(|a| !a.ip().is_loopback()) {
        tracing::warn!(
            %addr,
            "the web view has no login and listens beyond loopback; it answers only to the \
             host names in [web] hosts (and 127.0.0.1, localhost, its listen address)"
        );
    }
    let node_config = NodeConfig {
        data_dir: dir.clone(),
        listen: parse_addrs("--listen", &listen)?,
        bootstrap: parse_addrs("--bootstrap", &bootstrap)?,
        mdns: args.mdns || config.network.mdns,
        api,
        web,
        web_hosts: config.web.hosts.clone(),
        faults: Faults::from_env()?,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let node = node::start(node_config).await?;
        let mut lines = format!(
            "Concord node {} running\nnode id:   {}\n",
            config.name, node.node_id
        );
        for addr in node.addresses() {
            lines.push_str(&format!("listening: {addr}\n"));
        }
        if let Some(web) = node.web {
            lines.push_str(&format!("web view:  http://{web}/\n"));
        }
        lines.push_str(&format!(
            "local API: {} (address and token in {})\nStop with Ctrl-C or SIGTERM.",
            node.api,
            concord_node::api::server::ApiFile::path(dir.root()).display()
        ));
        output::text(&lines)?;
        wait_for_signal().await?;
        output::text("Stopping: closing connections and flushing the store…")?;
        node.shutdown().await?;
        output::text("Stopped.")?;
        Ok(ExitCode::SUCCESS)
    })
}

fn first_non_empty(flag: Vec<String>, file: Vec<String>, default: Vec<String>) -> Vec<String> {
    [flag, file]
        .into_iter()
        .find(|v| !v.is_empty())
        .unwrap_or(default)
}

fn parse_addrs(what: &str, addrs: &[String]) -> anyhow::Result<Vec<Multiaddr>> {
    addrs
        .iter()
        .map(|a| {
            a.trim()
                .parse::<Multiaddr>()
                .with_context(|| format!("{what} {a:?} is not a libp2p multiaddr"))
        })
        .collect()
}

async fn wait_for_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            result = tokio::signal::ctrl_c() => result?,
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await?;
    Ok(())
}
