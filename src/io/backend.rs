//! What a membership backend is to the daemon: something that registers this node's records,
//! reads the members' records, and reports them as [`BackendEvent`]s. etcd is one
//! (`super::etcd`); a Kubernetes-API or EVPN backend would be another adapter behind the same
//! trait, feeding the same sans-IO `core::membership`.

use tokio::sync::{mpsc, watch};

/// Why the prefix was listed again (the `reason` label of `overlayd_cluster_resyncs_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Resync {
    Start,
    Reconnect,
    Compacted,
    WatchFailed,
    Periodic,
}

impl Resync {
    pub const ALL: [Resync; 5] = [Resync::Start, Resync::Reconnect, Resync::Compacted, Resync::WatchFailed, Resync::Periodic];
    pub fn as_str(self) -> &'static str {
        match self {
            Resync::Start => "start",
            Resync::Reconnect => "reconnect",
            Resync::Compacted => "compacted",
            Resync::WatchFailed => "watch_failed",
            Resync::Periodic => "periodic",
        }
    }
}

/// What a membership backend reports to the daemon.
#[derive(Debug, Clone)]
pub enum BackendEvent {
    /// Connected (with the lease in use), or lost the store (with why).
    Connected { lease: i64, ttl: i64 },
    Disconnected { error: String },
    /// This node's records are written (`true`), or its name is held by another address.
    Registered(bool),
    /// Every record under the prefix at `revision`.
    Listed { revision: i64, reason: Resync, kvs: Vec<(String, Vec<u8>)> },
    Put { revision: i64, key: String, value: Vec<u8> },
    Delete { revision: i64, key: String },
}

/// A source of membership records. The daemon runs it on its control path; it reports through
/// `events` and returns once `leave` turns true and it has said goodbye.
pub trait Backend: Send + 'static {
    /// `records`: this node's (key, JSON value) pairs; `leaving`: the same marked `leaving`;
    /// `writes`: further keys to put under this node's lease or delete (MAC advertisements),
    /// made in batches while connected and registered (lost ones are made good by the daemon
    /// after the next `Connected` and listing).
    fn run(
        self,
        records: Vec<(String, String)>,
        leaving: Vec<(String, String)>,
        events: mpsc::UnboundedSender<BackendEvent>,
        writes: mpsc::UnboundedReceiver<crate::core::advert::KeyWrite>,
        leave: watch::Receiver<bool>,
    ) -> impl std::future::Future<Output = ()> + Send;
}

