//! A fleet simulated honestly: N membership agents, each the real sans-IO membership logic fed
//! by the real etcd backend (its own connection, lease, keepalives, listing and watch), against
//! a real etcd. Prints the join-storm convergence, the propagation of changes at a steady rate
//! (p50/p99 over every agent), and the time of one full listing. Run by
//! `netns-tests/98-cluster-scale.sh`, which starts etcd and a real daemon observing.
//!
//! Usage: cluster_scale ENDPOINT [AGENTS] [CHANGES] [PREFIX]
#![allow(clippy::disallowed_methods, clippy::print_stdout, reason = "a measuring program: it times with the wall clock and prints its results")]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use overlayd::config::ClusterConfig;
use overlayd::core::membership::{Change, LocalNet, Membership, RecordState, list_prefix, member_key};
use overlayd::io::backend::{Backend, BackendEvent};
use overlayd::io::etcd::EtcdBackend;
use tokio::sync::{Mutex, mpsc, watch};

fn net() -> LocalNet {
    LocalNet { name: "blue".into(), encap: "vxlan".into(), vni: Some(42), port: Some(4789), statics: Vec::new() }
}

/// Fake fleet addresses (198.18.0.0/15, benchmarking range).
fn addr(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, 18 + (i / 65536) as u8, ((i / 256) % 256) as u8, (i % 256) as u8))
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let endpoint = args.get(1).cloned().unwrap_or_else(|| "http://127.0.0.1:2379".into());
    let n: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1000);
    let changes: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(50);
    let prefix = args.get(4).cloned().unwrap_or_else(|| "/overlayd".into());
    let t0 = Instant::now();
    let converged = Arc::new(AtomicUsize::new(0));
    // per change k: the moment it was written, and how long each agent took to see it
    let seen: Arc<Mutex<Vec<Vec<f64>>>> = Arc::new(Mutex::new(vec![Vec::new(); changes]));
    let written: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; changes]));
    let mut leaves = Vec::with_capacity(n);
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let node = format!("a{i}");
        let cfg = ClusterConfig {
            endpoints: vec![endpoint.clone()],
            prefix: prefix.clone(),
            node_name: node.clone(),
            lease_ttl: Duration::from_secs(30),
            state_file: None,
            tls: None,
        };
        let me = addr(i);
        let l = net();
        let records = vec![(member_key(&prefix, "blue", &node), l.record(me, RecordState::Active).to_json())];
        let leaving = vec![(member_key(&prefix, "blue", &node), l.record(me, RecordState::Leaving).to_json())];
        let backend = EtcdBackend { cfg, underlay: me, tls: None, resync_every: Duration::from_secs(3600) };
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (leave, leave_rx) = watch::channel(false);
        leaves.push(leave);
        // no MAC advertisement here: the writes channel stays empty
        let (_writes, writes_rx) = tokio::sync::mpsc::unbounded_channel();
        tasks.push(tokio::spawn(backend.run(records, leaving, tx, writes_rx, leave_rx)));
        let mut m = Membership::new(&prefix, &node, me, Duration::from_secs(60), vec![net()]);
        let (converged, seen, written) = (converged.clone(), seen.clone(), written.clone());
        tokio::spawn(async move {
            let mut done = false;
            let clock = overlayd::io::clock::now;
            while let Some(ev) = rx.recv().await {
                let c = match ev {
                    BackendEvent::Listed { kvs, .. } => m.relist(kvs.iter().map(|(k, v)| (k.as_str(), v.as_slice())), clock()),
                    BackendEvent::Put { key, value, .. } => m.put(&key, &value, clock()),
                    BackendEvent::Delete { key, .. } => m.delete(&key, clock()),
                    BackendEvent::Connected { .. } | BackendEvent::Disconnected { .. } | BackendEvent::Registered(_) => Vec::new(),
                };
                for ch in c {
                    if let Change::Added { node, .. } = ch
                        && let Some(k) = node.strip_prefix('x').and_then(|k| k.parse::<usize>().ok())
                            && let Some(Some(at)) = written.lock().await.get(k).copied() {
                                seen.lock().await[k].push(at.elapsed().as_secs_f64() * 1000.0);
                            }
                }
                if !done && m.peers("blue").len() >= n - 1 {
                    done = true;
                    converged.fetch_add(1, Relaxed);
                }
            }
        });
    }
    // join storm
    loop {
        let c = converged.load(Relaxed);
        if c == n {
            break;
        }
        if t0.elapsed() > Duration::from_secs(600) {
            println!("join storm: only {c}/{n} agents converged within 600 s");
            std::process::exit(1);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("join storm: {n} agents, every one sees the other {} after {:.2} s", n - 1, t0.elapsed().as_secs_f64());

    // changes at 10/s: a new member record each, seen by every agent
    let mut client = match etcd_client::Client::connect([endpoint.as_str()], None).await {
        Ok(c) => c,
        Err(e) => {
            println!("cannot connect: {e}");
            std::process::exit(1);
        }
    };
    let lease = client.lease_grant(60, None).await.map(|r| r.id()).unwrap_or(0);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    for k in 0..changes {
        tick.tick().await;
        let key = member_key(&prefix, "blue", &format!("x{k}"));
        let value = net().record(addr(n + k), RecordState::Active).to_json();
        written.lock().await[k] = Some(Instant::now());
        let _ = client.put(key, value, Some(etcd_client::PutOptions::new().with_lease(lease))).await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline && seen.lock().await.iter().any(|v| v.len() < n) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut all: Vec<f64> = seen.lock().await.iter().flatten().copied().collect();
    let got = all.len();
    println!(
        "propagation at 10 changes/s: {changes} changes x {n} agents, {got} deliveries, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        pct(&mut all, 0.5),
        pct(&mut all, 0.99),
        pct(&mut all, 1.0)
    );
    // one full listing, as a re-list does it
    let t = Instant::now();
    let r = client.get(list_prefix(&prefix), Some(etcd_client::GetOptions::new().with_prefix())).await;
    let count = r.map(|r| r.kvs().len()).unwrap_or(0);
    println!("re-list: {count} records in {:.1} ms", t.elapsed().as_secs_f64() * 1000.0);
    if std::env::var_os("SCALE_HOLD").is_some() {
        // the lab measures etcd and the observing daemon now; it signals us when done
        println!("holding");
        let _ = tokio::signal::ctrl_c().await;
    }
    let _ = client.lease_revoke(lease).await;
    for l in &leaves {
        let _ = l.send(true);
    }
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    if got < changes * n {
        println!("only {got} of {} deliveries", changes * n);
        std::process::exit(1);
    }
}
