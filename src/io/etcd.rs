//! The etcd v3 membership backend: registers this node's records under a lease, lists the
//! prefix, watches it, and reports what it reads as [`BackendEvent`]s. It never decides
//! membership (that is `core::membership`) and never touches the data path.
//!
//! - Registration: one lease (TTL `cluster.lease_ttl_secs`, kept alive every third of it),
//!   the node name claimed in a transaction under `<prefix>/v1/nodes/<node>` together with
//!   the records; a name held by another underlay address is refused ("node name taken") and
//!   retried on the next resync, never overwritten.
//! - Discovery: a listing of `<prefix>/v1/networks/`, then a watch from the next revision. A
//!   watch that fails or is compacted, a reconnect, and a timer (±20 % jitter) re-list.
//! - Failures: every error ends the session; the next one starts after a jittered backoff, on
//!   the next endpoint (one at a time), and reuses the lease if etcd still has it (else grants
//!   one and re-writes the records). HTTP/2 keepalives notice a half-open connection. Nothing
//!   here exits the daemon.
//! - Leaving: the records are re-written `leaving`, then the lease is revoked.

use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Txn, TxnOp, TxnOpResponse, WatchOptions};
use tokio::sync::{mpsc, watch};

use crate::config::ClusterConfig;
use crate::core::advert::KeyWrite;
use crate::core::membership::list_prefix;

use super::backend::{Backend, BackendEvent, Resync};

/// TLS material, read at start (before privileges are dropped).
#[derive(Clone)]
pub struct TlsMaterial {
    pub ca: Option<Vec<u8>>,
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

/// A TLS file of `[cluster]` that cannot be read; `key` names the setting (`ca_file`, ...).
#[derive(Debug, thiserror::Error)]
#[error("cluster.{key} {}: {error}", path.display())]
pub struct TlsError {
    pub key: &'static str,
    pub path: std::path::PathBuf,
    pub error: std::io::Error,
}

impl TlsMaterial {
    pub fn read(cfg: &ClusterConfig) -> Result<Option<TlsMaterial>, TlsError> {
        let Some(tls) = &cfg.tls else { return Ok(None) };
        let read = |key: &'static str, p: &std::path::Path| {
            std::fs::read(p).map_err(|error| TlsError { key, path: p.to_path_buf(), error })
        };
        let ca = tls.ca_file.as_deref().map(|p| read("ca_file", p)).transpose()?;
        let identity = match &tls.identity {
            Some((c, k)) => Some((read("cert_file", c)?, read("key_file", k)?)),
            None => None,
        };
        Ok(Some(TlsMaterial { ca, identity }))
    }
}

pub struct EtcdBackend {
    pub cfg: ClusterConfig,
    pub underlay: std::net::IpAddr,
    pub tls: Option<TlsMaterial>,
    /// Mean time between periodic re-lists.
    pub resync_every: Duration,
}

/// Time any single request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// `d` ± 20 %, from a cheap per-call random source (every `RandomState` has keys of its own).
fn jitter(d: Duration) -> Duration {
    let r = std::collections::hash_map::RandomState::new();
    use std::hash::BuildHasher;
    let x = r.hash_one(()) % 4001; // 0..=4000
    d.mul_f64(0.8 + x as f64 / 10_000.0)
}

async fn timed<T>(f: impl std::future::Future<Output = Result<T, etcd_client::Error>>) -> Result<T, String> {
    match tokio::time::timeout(REQUEST_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {}s", REQUEST_TIMEOUT.as_secs())),
    }
}

enum End {
    Left,
    Failed(String),
}

struct Session<'a> {
    b: &'a EtcdBackend,
    records: &'a [(String, String)],
    leaving: &'a [(String, String)],
    events: &'a mpsc::UnboundedSender<BackendEvent>,
    lease: &'a mut Option<i64>,
    ttl: i64,
    /// The endpoint this session talks to (one at a time: a request balanced onto a dead
    /// member would fail the session while the others are fine).
    endpoint: &'a str,
    /// Whether the last registration succeeded (a goodbye writes only keys this node owns).
    registered: &'a std::sync::atomic::AtomicBool,
    writes: &'a mut mpsc::UnboundedReceiver<KeyWrite>,
}

/// Writes made in one transaction at most (etcd's default limit is 128 operations).
const WRITE_BATCH: usize = 100;

impl Backend for EtcdBackend {
    async fn run(self, records: Vec<(String, String)>, leaving: Vec<(String, String)>, events: mpsc::UnboundedSender<BackendEvent>, mut writes: mpsc::UnboundedReceiver<KeyWrite>, mut leave: watch::Receiver<bool>) {
        let mut lease = None;
        let mut backoff = BACKOFF_MIN;
        let mut next_endpoint = 0usize;
        let registered = std::sync::atomic::AtomicBool::new(false);
        let mut reason = Resync::Start;
        let ttl = self.cfg.lease_ttl.as_secs() as i64;
        loop {
            let endpoint = &self.cfg.endpoints[next_endpoint % self.cfg.endpoints.len()];
            let mut s = Session { b: &self, records: &records, leaving: &leaving, events: &events, lease: &mut lease, ttl, endpoint, registered: &registered, writes: &mut writes };
            if *leave.borrow() {
                // leaving while disconnected: one attempt at a goodbye, on the next endpoint
                if let Ok(mut c) = s.connect().await {
                    s.goodbye(&mut c, registered.load(std::sync::atomic::Ordering::Relaxed)).await;
                }
                return;
            }
            let started = super::clock::monotonic();
            match s.run(reason, &mut leave).await {
                End::Left => return,
                End::Failed(error) => {
                    next_endpoint += 1;
                    tracing::warn!(endpoint, error, "cluster: etcd session failed (unreachable or refused); forwarding goes on with the last known members");
                    let _ = events.send(BackendEvent::Disconnected { error });
                }
            }
            if started.elapsed() > BACKOFF_MAX {
                backoff = BACKOFF_MIN;
            }
            reason = Resync::Reconnect;
            let wait = jitter(backoff);
            backoff = (backoff * 2).min(BACKOFF_MAX);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = leave.changed() => {}
            }
        }
    }
}

impl Session<'_> {
    async fn run(&mut self, first: Resync, leave: &mut watch::Receiver<bool>) -> End {
        match self.serve(first, leave).await {
            Ok(()) => End::Left,
            Err(e) => End::Failed(e),
        }
    }

    async fn connect(&self) -> Result<Client, String> {
        let ka = Duration::from_secs((self.ttl / 3).max(1) as u64);
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_keep_alive(ka, Duration::from_secs(3))
            .with_keep_alive_while_idle(true);
        if let Some(t) = &self.b.tls {
            let mut o = etcd_client::TlsOptions::new();
            if let Some(ca) = &t.ca {
                o = o.ca_certificate(etcd_client::Certificate::from_pem(ca));
            }
            if let Some((c, k)) = &t.identity {
                o = o.identity(etcd_client::Identity::from_pem(c, k));
            }
            opts = opts.with_tls(o);
        }
        timed(Client::connect([self.endpoint], Some(opts))).await
    }

    /// A lease: the previous one if etcd still has it, else a new one.
    async fn lease(&mut self, c: &mut Client) -> Result<i64, String> {
        if let Some(id) = *self.lease {
            // etcd answers a TTL of -1 for a lease it does not have; an error is the connection's
            if timed(c.lease_time_to_live(id, None)).await?.ttl() > 0 {
                return Ok(id);
            }
            tracing::info!(lease = format_args!("{id:x}"), "cluster: the lease is gone; granting a new one and writing the records again");
        }
        let r = timed(c.lease_grant(self.ttl, None)).await?;
        *self.lease = Some(r.id());
        Ok(r.id())
    }

    /// Claim the node name and write `records` under `lease`; `false` if another underlay
    /// address holds the name.
    async fn register(&self, c: &mut Client, lease: i64, records: &[(String, String)]) -> Result<bool, String> {
        let cfg = &self.b.cfg;
        let name_key = format!("{}/{}/nodes/{}", cfg.prefix, crate::core::membership::SCHEMA, cfg.node_name);
        let me = self.b.underlay.to_string();
        let opts = || Some(etcd_client::PutOptions::new().with_lease(lease));
        let mut ops = vec![TxnOp::put(name_key.clone(), me.clone(), opts())];
        ops.extend(records.iter().map(|(k, v)| TxnOp::put(k.clone(), v.clone(), opts())));
        for cmp in [Compare::version(name_key.clone(), CompareOp::Equal, 0), Compare::value(name_key.clone(), CompareOp::Equal, me.clone())] {
            let txn = Txn::new().when([cmp]).and_then(ops.clone()).or_else([TxnOp::get(name_key.clone(), None)]);
            let r = timed(c.txn(txn)).await?;
            if r.succeeded() {
                self.registered.store(true, std::sync::atomic::Ordering::Relaxed);
                return Ok(true);
            }
            let holder = r.op_responses().into_iter().find_map(|o| match o {
                TxnOpResponse::Get(g) => g.kvs().first().map(|kv| String::from_utf8_lossy(kv.value()).into_owned()),
                TxnOpResponse::Put(_) | TxnOpResponse::Delete(_) | TxnOpResponse::Txn(_) => None,
            });
            if let Some(h) = holder.filter(|h| h != &me) {
                tracing::error!(node = cfg.node_name, held_by = h, underlay = me,
                    "cluster: node name taken by another underlay address; not registering (set cluster.node_name, or stop the other node)");
                self.registered.store(false, std::sync::atomic::Ordering::Relaxed);
                return Ok(false);
            }
        }
        Err("the node name claim raced with another writer".into())
    }

    /// Say goodbye: the records marked leaving first (the others drop us at once), then the
    /// lease revoked.
    async fn goodbye(&self, c: &mut Client, registered: bool) {
        let Some(lease) = *self.lease else { return };
        if registered {
            let ops: Vec<TxnOp> = self.leaving.iter().map(|(k, v)| TxnOp::put(k.clone(), v.clone(), Some(etcd_client::PutOptions::new().with_lease(lease)))).collect();
            if let Err(e) = timed(c.txn(Txn::new().and_then(ops))).await {
                tracing::warn!(error = e, "cluster: could not mark the records leaving");
            }
        }
        match timed(c.lease_revoke(lease)).await {
            Ok(_) => tracing::info!(lease = format_args!("{lease:x}"), "cluster: left (records marked leaving, lease revoked)"),
            Err(e) => tracing::warn!(error = e, "cluster: could not revoke the lease; the records expire with it"),
        }
    }

    async fn list(&self, c: &mut Client, reason: Resync) -> Result<i64, String> {
        let prefix = list_prefix(&self.b.cfg.prefix);
        let r = timed(c.get(prefix, Some(GetOptions::new().with_prefix()))).await?;
        let revision = r.header().map_or(0, |h| h.revision());
        let kvs: Vec<(String, Vec<u8>)> = r.kvs().iter().map(|kv| (String::from_utf8_lossy(kv.key()).into_owned(), kv.value().to_vec())).collect();
        tracing::info!(reason = reason.as_str(), revision, records = kvs.len(), "cluster: listed the members");
        let _ = self.events.send(BackendEvent::Listed { revision, reason, kvs });
        Ok(revision)
    }

    async fn serve(&mut self, first: Resync, leave: &mut watch::Receiver<bool>) -> Result<(), String> {
        let mut c = self.connect().await?;
        let mut lease = self.lease(&mut c).await?;
        let mut registered = self.register(&mut c, lease, self.records).await?;
        let _ = self.events.send(BackendEvent::Connected { lease, ttl: self.ttl });
        let _ = self.events.send(BackendEvent::Registered(registered));
        tracing::info!(endpoint = self.endpoint, lease = format_args!("{lease:x}"), registered, "cluster: connected to etcd");
        let (mut keeper, mut kas) = timed(c.lease_keep_alive(lease)).await?;
        let mut revision = self.list(&mut c, first).await?;
        let prefix = list_prefix(&self.b.cfg.prefix);
        let watch_from = |rev: i64| Some(WatchOptions::new().with_prefix().with_start_revision(rev + 1));
        let mut w = timed(c.watch(prefix.clone(), watch_from(revision))).await?;
        let mut ka_tick = tokio::time::interval(Duration::from_secs((self.ttl / 3).max(1) as u64));
        let resync = tokio::time::sleep(jitter(self.b.resync_every));
        tokio::pin!(resync);
        loop {
            tokio::select! {
                _ = leave.changed() => {
                    self.goodbye(&mut c, registered).await;
                    return Ok(());
                }
                Some(first) = self.writes.recv() => {
                    let mut batch = vec![first];
                    while batch.len() < WRITE_BATCH {
                        match self.writes.try_recv() {
                            Ok(w) => batch.push(w),
                            Err(_) => break,
                        }
                    }
                    if registered {
                        let ops: Vec<TxnOp> = batch
                            .into_iter()
                            .map(|w| match w {
                                KeyWrite::Put { key, value } => TxnOp::put(key, value, Some(etcd_client::PutOptions::new().with_lease(lease))),
                                KeyWrite::Delete { key } => TxnOp::delete(key, None),
                            })
                            .collect();
                        timed(c.txn(Txn::new().and_then(ops))).await?;
                    }
                }
                _ = ka_tick.tick() => {
                    timed(keeper.keep_alive()).await?;
                }
                m = kas.message() => match m {
                    Ok(Some(r)) if r.ttl() <= 0 => {
                        tracing::warn!(lease = format_args!("{lease:x}"), "cluster: the lease was revoked or expired; granting a new one and writing the records again");
                        *self.lease = None;
                        lease = self.lease(&mut c).await?;
                        registered = self.register(&mut c, lease, self.records).await?;
                        (keeper, kas) = timed(c.lease_keep_alive(lease)).await?;
                        let _ = self.events.send(BackendEvent::Connected { lease, ttl: self.ttl });
                        let _ = self.events.send(BackendEvent::Registered(registered));
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => return Err("the lease keepalive stream ended".into()),
                    Err(e) => return Err(format!("lease keepalive: {e}")),
                },
                m = w.message() => {
                    let reason = match m {
                        Ok(Some(r)) if r.compact_revision() > 0 => Some(Resync::Compacted),
                        Ok(Some(r)) if r.canceled() => Some(Resync::WatchFailed),
                        Ok(Some(r)) => {
                            for e in r.events() {
                                let Some(kv) = e.kv() else { continue };
                                let key = String::from_utf8_lossy(kv.key()).into_owned();
                                revision = revision.max(kv.mod_revision());
                                let ev = match e.event_type() {
                                    EventType::Put => BackendEvent::Put { revision, key, value: kv.value().to_vec() },
                                    EventType::Delete => BackendEvent::Delete { revision, key },
                                };
                                let _ = self.events.send(ev);
                            }
                            if let Some(h) = r.header() {
                                revision = revision.max(h.revision());
                            }
                            None
                        }
                        Ok(None) | Err(_) => Some(Resync::WatchFailed),
                    };
                    if let Some(reason) = reason {
                        tracing::warn!(reason = reason.as_str(), "cluster: the watch ended; listing again");
                        revision = self.list(&mut c, reason).await?;
                        w = timed(c.watch(prefix.clone(), watch_from(revision))).await?;
                    }
                }
                _ = &mut resync => {
                    if !registered {
                        registered = self.register(&mut c, lease, self.records).await?;
                        let _ = self.events.send(BackendEvent::Registered(registered));
                    }
                    revision = self.list(&mut c, Resync::Periodic).await?;
                    w = timed(c.watch(prefix.clone(), watch_from(revision))).await?;
                    resync.as_mut().reset(tokio::time::Instant::now() + jitter(self.b.resync_every));
                }
            }
        }
    }
}
