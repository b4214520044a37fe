//! The tokio driver (being written).
use super::{Config, Stats};
use crate::cluster::Command;
use crate::cookie::Cookie;
use crate::events::Bus;
use crate::node::Node;
use crate::strategies::TopologyStatus;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// A topology as the driver sees it.
pub(crate) struct Topology {
    pub name: String,
    pub authoritative: bool,
    pub prune_after: Duration,
    pub status: watch::Receiver<TopologyStatus>,
}

/// Everything the driver runs with.
pub(crate) struct Params {
    pub local: Node,
    pub cookie: Cookie,
    pub config: Config,
    pub listener: tokio::net::TcpListener,
    pub topologies: Vec<Topology>,
    pub bus: Arc<Bus>,
    pub commands: mpsc::Receiver<Command>,
    pub stats: watch::Sender<Stats>,
}

pub(crate) async fn run(mut p: Params) {
    while let Some(Command::Shutdown(tx)) = p.commands.recv().await {
        let _ = tx.send(());
        return;
    }
}
