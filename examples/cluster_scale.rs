//! A fleet simulated honestly: N membership agents, each the real sans-IO membership logic fed
//! by the real etcd backend (its own connection, lease, keepalives, listing and watch), against
//! a real etcd. Each agent also advertises MACS MACs of its own (a VM each, with an address)
//! through the real sans-IO advertiser, whose writes the same backend makes under the agent's
//! lease, and takes every other agent's MAC records in (bindings, as a daemon would apply
//! them). Prints the join-storm convergence, the MAC advertisement convergence, the
//! propagation of changes at a steady rate (p50/p99 over every agent), and the time of one
//! full listing. Run by `netns-tests/98-cluster-scale.sh`, which starts etcd and real daemons
//! observing (and measures the flooding they save).
//!
//! Usage: cluster_scale ENDPOINT [AGENTS] [CHANGES] [PREFIX]
//! Environment: SCALE_MACS (MACs per agent, default 1; 0: no advertisement), SCALE_MAC_RATE
//! (agents whose VMs show up per second once the join storm is over, default 10: VMs start
//! over some seconds, not all in one instant), SCALE_HOLD.
//! Agent i's MACs are 02:aa:00:00:<i>, its m-th one's byte 2 is m (see [`vm_mac`]); their
//! addresses 198.19.<i> ([`vm_ip`], fake fleet addresses of 198.18.0.0/15).
#![allow(clippy::disallowed_methods, clippy::print_stdout, reason = "a measuring program: it times with the wall clock and prints its results")]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use overlayd::config::ClusterConfig;
use overlayd::core::advert::{Advertiser, DEFAULT_RATE, Mode};
use overlayd::core::membership::{Change, LocalNet, Membership, RecordState, list_prefix, member_key};
use overlayd::core::wire::ethernet::MacAddr;
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

/// The `m`-th VM MAC of agent `i`.
fn vm_mac(i: usize, m: usize) -> MacAddr {
    MacAddr([0x02, 0xaa, m as u8, (i >> 16) as u8, (i >> 8) as u8, i as u8])
}

/// The address of agent `i`'s `m`-th VM: 198.19.0.0/16 from 198.19.0.1 on.
fn vm_ip(i: usize, m: usize) -> IpAddr {
    let k = i * 4 + m + 1;
    IpAddr::V4(Ipv4Addr::new(198, 19, (k / 256) as u8, (k % 256) as u8))
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
    let macs: usize = std::env::var("SCALE_MACS").ok().and_then(|s| s.parse().ok()).unwrap_or(1).min(4);
    let mac_rate: u64 = std::env::var("SCALE_MAC_RATE").ok().and_then(|s| s.parse().ok()).unwrap_or(10).max(1);
    let t0 = Instant::now();
    let converged = Arc::new(AtomicUsize::new(0));
    // agents that bound every other agent's MACs; advertisement starts once the join storm is
    // over (so its time is its own)
    let mac_converged = Arc::new(AtomicUsize::new(0));
    let advertise: Arc<std::sync::OnceLock<Instant>> = Arc::new(std::sync::OnceLock::new());
    // connections the agents' backends lost (a request without an answer in time, and so on)
    let disconnects = Arc::new(AtomicUsize::new(0));
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
        // the advertiser's writes go to etcd through this agent's backend, under its lease
        let (writes, writes_rx) = tokio::sync::mpsc::unbounded_channel();
        tasks.push(tokio::spawn(backend.run(records, leaving, tx, writes_rx, leave_rx)));
        let mut m = Membership::new(&prefix, &node, me, Duration::from_secs(60), vec![net()]);
        let mut adv = Advertiser::new(&prefix, &node, DEFAULT_RATE, [("blue".to_string(), Mode::MacsIps, 8192)]);
        let clock = overlayd::io::clock::now;
        let (converged, seen, written, mac_converged) = (converged.clone(), seen.clone(), written.clone(), mac_converged.clone());
        let (advertise, disconnects) = (advertise.clone(), disconnects.clone());
        tokio::spawn(async move {
            let mut done = false;
            let mut macs_done = macs == 0;
            let mut observed = false;
            // the advertiser's rounds, as the daemon runs them a few times a second
            let mut round = tokio::time::interval(Duration::from_millis(250));
            loop {
                let ev = tokio::select! {
                    ev = rx.recv() => match ev {
                        Some(ev) => ev,
                        None => break,
                    },
                    _ = round.tick() => {
                        // agent i's VMs show up i / SCALE_MAC_RATE seconds after advertisement starts
                        let due = advertise.get().is_some_and(|t| t.elapsed() >= Duration::from_millis(i as u64 * 1000 / mac_rate));
                        if !observed && macs > 0 && due {
                            // its VMs show up on its ports now: published once stable (1 s)
                            adv.observe("blue", (0..macs).map(|k| (vm_mac(i, k), vec![vm_ip(i, k)])), clock());
                            observed = true;
                        }
                        for w in adv.writes(clock()) {
                            let _ = writes.send(w);
                        }
                        continue;
                    }
                };
                let c = match ev {
                    BackendEvent::Listed { kvs, .. } => {
                        adv.relist(kvs.iter().map(|(k, v)| (k.as_str(), v.as_slice())), clock());
                        m.relist(kvs.iter().map(|(k, v)| (k.as_str(), v.as_slice())), clock())
                    }
                    BackendEvent::Put { key, value, .. } => {
                        adv.remote_put(&key, &value, clock());
                        m.put(&key, &value, clock())
                    }
                    BackendEvent::Delete { key, .. } => {
                        adv.remote_delete(&key);
                        m.delete(&key, clock())
                    }
                    BackendEvent::Connected { .. } => {
                        adv.rewrite_all();
                        Vec::new()
                    }
                    BackendEvent::Disconnected { .. } => {
                        disconnects.fetch_add(1, Relaxed);
                        Vec::new()
                    }
                    BackendEvent::Registered(_) => Vec::new(),
                };
                // the bindings a daemon would apply to its tables (not kept here)
                adv.take_changes();
                if !macs_done && adv.sizes("blue").1 >= (n - 1) * macs {
                    macs_done = true;
                    mac_converged.fetch_add(1, Relaxed);
                }
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
    if macs > 0 {
        let ta = Instant::now();
        let _ = advertise.set(ta);
        loop {
            let c = mac_converged.load(Relaxed);
            if c == n {
                break;
            }
            if ta.elapsed() > Duration::from_secs(600) {
                println!("MAC advertisement: only {c}/{n} agents bound every other agent's MACs within 600 s");
                std::process::exit(1);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        println!(
            "MAC advertisement: {n} agents x {macs} MAC (with an address), showing up at {mac_rate} agents/s and published once stable (1 s); every agent bound the other {} after {:.2} s ({:.2} s after the last showed up)",
            (n - 1) * macs,
            ta.elapsed().as_secs_f64(),
            ta.elapsed().as_secs_f64() - (n as f64 - 1.0) / mac_rate as f64
        );
    }

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
    println!("etcd connections the agents lost and made again over the run: {}", disconnects.load(Relaxed));
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
