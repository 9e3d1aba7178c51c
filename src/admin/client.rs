//! The admin socket's client side: `overlayd fdb | peers | stats` send one request to the
//! running daemon and print the answer as a table (or as JSON with `--json`).

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use super::{FdbTable, Flushed, PeerTable, Reply, Request};
use crate::metrics::Sample;

/// How long the client waits for the daemon's answer.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Why a request got no answer, worded for a one-line message.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no overlayd admin socket at {0} (is overlayd running? use --admin PATH or --config FILE)")]
    NoSocket(String),
    #[error("no overlayd is answering at {0} (is overlayd running?)")]
    NotRunning(String),
    #[error("permission denied on {0} (only its owner may use it, and the members of admin.group if that is set)")]
    Permission(String),
    #[error("admin socket {0}: {1}")]
    Io(String, io::Error),
    #[error("the daemon's reply is not understood: {0}")]
    Protocol(String),
    #[error("{0}")]
    Refused(String),
}

/// Send `req` to the daemon at `path` and return the `result` of its reply.
#[allow(clippy::wildcard_enum_match_arm, reason = "io::ErrorKind is open-ended: the kinds not named are I/O errors as they stand")]
pub fn request(path: &Path, req: &Request) -> Result<serde_json::Value, ClientError> {
    let p = path.display().to_string();
    let mut s = UnixStream::connect(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => ClientError::NoSocket(p.clone()),
        io::ErrorKind::ConnectionRefused => ClientError::NotRunning(p.clone()),
        io::ErrorKind::PermissionDenied => ClientError::Permission(p.clone()),
        _ => ClientError::Io(p.clone(), e),
    })?;
    let io_err = |e: io::Error| ClientError::Io(p.clone(), e);
    s.set_read_timeout(Some(TIMEOUT)).map_err(io_err)?;
    s.set_write_timeout(Some(TIMEOUT)).map_err(io_err)?;
    let mut line = serde_json::to_vec(req).map_err(|e| ClientError::Protocol(e.to_string()))?;
    line.push(b'\n');
    s.write_all(&line).map_err(io_err)?;
    let mut answer = String::new();
    BufReader::new(&s).read_line(&mut answer).map_err(io_err)?;
    if answer.is_empty() {
        return Err(ClientError::Protocol("the daemon closed the connection without answering".into()));
    }
    let reply: Reply = serde_json::from_str(&answer).map_err(|e| ClientError::Protocol(e.to_string()))?;
    match reply {
        Reply { ok: true, result: Some(v), .. } => Ok(v),
        Reply { ok: true, result: None, .. } => Err(ClientError::Protocol("an ok reply without a result".into())),
        Reply { error, .. } => Err(ClientError::Refused(error.unwrap_or_else(|| "the daemon refused without saying why".into()))),
    }
}

fn decode<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<T, ClientError> {
    serde_json::from_value(v).map_err(|e| ClientError::Protocol(e.to_string()))
}

/// Render the answer to `req` for a human (tables) or a script (`json`: pretty JSON).
pub fn render(req: &Request, v: serde_json::Value, json: bool) -> Result<String, ClientError> {
    if json {
        return serde_json::to_string_pretty(&v).map(|s| s + "\n").map_err(|e| ClientError::Protocol(e.to_string()));
    }
    Ok(match req {
        Request::Fdb { .. } => fdb_table(&decode::<Vec<FdbTable>>(v)?),
        Request::FdbFlush { .. } => {
            let out: Vec<Flushed> = decode(v)?;
            out.iter().map(|f| format!("{}: {} entries flushed\n", f.network, f.flushed)).collect()
        }
        Request::Peers { .. } => peer_table(&decode::<Vec<PeerTable>>(v)?),
        Request::Stats => stats_text(&decode(v)?),
        Request::Cluster => cluster_text(&decode(v)?),
    })
}

/// Left-aligned columns, two spaces apart.
fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols).map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c + 1 == r.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  ", w = widths[c]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn secs(s: f64) -> String {
    if s < 60.0 { format!("{s:.1}s") } else { format!("{:.0}s", s) }
}

fn fdb_table(tables: &[FdbTable]) -> String {
    let mut rows = vec![["NETWORK", "MAC", "PORT", "TYPE", "AGE"].map(String::from).to_vec()];
    for t in tables {
        for e in &t.entries {
            let port = if e.kind == "peer" { format!("peer {}", e.port) } else { e.port.clone() };
            rows.push(vec![t.network.clone(), e.mac.clone(), port, e.entry_type.clone(), secs(e.age_secs)]);
        }
    }
    let n: usize = tables.iter().map(|t| t.entries.len()).sum();
    let mut out = table(&rows);
    out.push_str(&format!("{n} entr{} in {} network{}\n", if n == 1 { "y" } else { "ies" }, tables.len(), if tables.len() == 1 { "" } else { "s" }));
    if tables.iter().any(|t| !t.neighbours.is_empty()) {
        let mut rows = vec![["NETWORK", "IP", "MAC", "SOURCE", "AGE"].map(String::from).to_vec()];
        for t in tables {
            for b in &t.neighbours {
                let mut source = if b.peer == "-" { b.source.clone() } else { format!("{} peer {}", b.source, b.peer) };
                if let Some(l) = b.lease_secs {
                    source.push_str(&format!(" (dhcp, lease {} left)", secs(l)));
                }
                rows.push(vec![t.network.clone(), b.ip.clone(), b.mac.clone(), source, secs(b.age_secs)]);
            }
        }
        out.push('\n');
        out.push_str(&table(&rows));
    }
    out
}

fn peer_table(tables: &[PeerTable]) -> String {
    let mut rows = vec![["NETWORK", "PEER", "SOURCE", "STATE", "OVERLAYD", "GSO", "LAST SEEN", "RX PACKETS", "RX BYTES", "TX PACKETS", "TX BYTES"].map(String::from).to_vec()];
    for t in tables {
        for p in &t.peers {
            let seen = p.last_seen_ago_secs.map_or_else(|| "never".to_string(), |s| format!("{} ago", secs(s)));
            rows.push(vec![
                t.network.clone(),
                p.peer.clone(),
                p.source.clone(),
                if p.up { "up" } else { "down" }.to_string(),
                if p.speaks_overlayd { "yes" } else { "no" }.to_string(),
                if p.gets_gso { "yes" } else { "no" }.to_string(),
                seen,
                p.rx_packets.to_string(),
                p.rx_bytes.to_string(),
                p.tx_packets.to_string(),
                p.tx_bytes.to_string(),
            ]);
        }
    }
    table(&rows)
}

fn cluster_text(c: &crate::daemon::cluster::ClusterStatus) -> String {
    let mut out = format!(
        "endpoints  {}\nnode       {}\nconnected  {}{}\nregistered {}\nlease      {} (ttl {}s)\nrevision   {}\nresyncs    {}\n",
        c.endpoints.join(", "),
        c.node_name,
        if c.connected { "yes" } else { "no" },
        c.last_error.as_deref().map(|e| format!(" ({e})")).unwrap_or_default(),
        if c.registered { "yes" } else { "no" },
        c.lease.as_deref().unwrap_or("none"),
        c.lease_ttl_secs,
        c.revision,
        c.resyncs.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", "),
    );
    let mut rows = vec![["NETWORK", "NODE", "UNDERLAY", "STATUS"].map(String::from).to_vec()];
    for n in &c.networks {
        for m in &n.members {
            rows.push(vec![n.network.clone(), m.node.clone(), m.underlay.clone(), m.status.clone()]);
        }
    }
    out.push('\n');
    out.push_str(&table(&rows));
    for n in c.networks.iter().filter(|n| n.advertising) {
        out.push_str(&format!(
            "{}: MACs advertised here {}, by the others {}; published {}, withdrawn {}, rejected {}\n",
            n.network, n.macs_local, n.macs_remote, n.adverts_published, n.adverts_withdrawn, n.adverts_rejected
        ));
    }
    out
}

fn drops_line(d: &std::collections::BTreeMap<String, u64>) -> String {
    let nz: Vec<String> = d.iter().filter(|(_, v)| **v > 0).map(|(k, v)| format!("{k} {v}")).collect();
    if nz.is_empty() { "none".into() } else { nz.join(", ") }
}

fn stats_text(s: &Sample) -> String {
    let mut out = String::new();
    for n in &s.networks {
        let e = &n.fdb_events;
        out.push_str(&format!("network {} ({} {})\n", n.name, n.encap, n.vni));
        out.push_str(&format!("  local ports  rx {} frames, {} bytes; tx {} frames, {} bytes\n", n.tap_rx_frames, n.tap_rx_bytes, n.tap_tx_frames, n.tap_tx_bytes));
        let (rxp, rxb, txp, txb) = n.peers.iter().fold((0, 0, 0, 0), |a, p| (a.0 + p.rx_packets, a.1 + p.rx_bytes, a.2 + p.tx_packets, a.3 + p.tx_bytes));
        out.push_str(&format!("  tunnels      rx {rxp} packets, {rxb} bytes; tx {txp} packets, {txb} bytes; peers {}\n", n.peers.len()));
        out.push_str(&format!("  flooded      frames {}\n", n.flooded_frames));
        out.push_str(&format!("  partial csum frames {} (completed; sent by a peer with checksum offload on a virtual link)\n", n.partial_checksums));
        match n.datapath.as_str() {
            "ebpf" => out.push_str(&format!(
                "  data path    ebpf fast path for known unicast: {} frames from local ports, {} tunnel packets received (counted above too)\n",
                n.fast_frames[0], n.fast_frames[1]
            )),
            "" => {}
            other => out.push_str(&format!("  data path    {other}\n")),
        }
        out.push_str(&format!(
            "  fdb          {} entries (cap {}); learned {}, moved {}, expired {}, evicted {}, flushed {}, pinned {}, cluster entries moved by traffic {}\n",
            n.fdb_entries, n.fdb_max_entries, e.learned, e.moved, e.expired, e.evicted, e.flushed, e.pinned, e.cluster_moved
        ));
        let m = &n.pmtu;
        out.push_str(&format!(
            "  pmtu         signals ipv4 {}, ipv6 {}, rate-limited {}; mss clamped {}\n",
            m.signals_ipv4, m.signals_ipv6, m.rate_limited, m.mss_clamped
        ));
        out.push_str(&format!("  drops        {}\n", drops_line(&n.drops)));
    }
    out.push_str(&format!("drops outside any network: {}\n", drops_line(&s.unattributed_drops)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::FdbEntry;

    #[test]
    fn fdb_table_aligns_columns_and_names_the_peer() {
        let t = vec![FdbTable {
            network: "blue".into(),
            ageing_secs: 300,
            entries: vec![
                FdbEntry { mac: "02:00:00:00:00:0a".into(), kind: "local".into(), port: "ovl-blue".into(), entry_type: "learned".into(), age_secs: 1.25 },
                FdbEntry { mac: "02:00:00:00:00:0b".into(), kind: "peer".into(), port: "192.0.2.2".into(), entry_type: "learned".into(), age_secs: 75.0 },
            ],
            neighbours: vec![],
        }];
        let s = fdb_table(&t);
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines[0], "NETWORK  MAC                PORT            TYPE     AGE");
        assert_eq!(lines[1], "blue     02:00:00:00:00:0a  ovl-blue        learned  1.2s");
        assert_eq!(lines[2], "blue     02:00:00:00:00:0b  peer 192.0.2.2  learned  75s");
        assert_eq!(lines[3], "2 entries in 1 network");
        assert_eq!(lines.len(), 4, "no neighbour table without bindings");
    }

    #[test]
    fn fdb_table_lists_the_neighbour_bindings_after_the_macs() {
        use crate::admin::NeighEntry;
        let t = vec![FdbTable {
            network: "blue".into(),
            ageing_secs: 300,
            entries: vec![],
            neighbours: vec![
                NeighEntry { ip: "198.51.100.2".into(), mac: "02:00:00:00:00:0b".into(), source: "snooped".into(), peer: "192.0.2.2".into(), age_secs: 3.0, lease_secs: None },
                NeighEntry { ip: "198.51.100.9".into(), mac: "02:00:00:00:00:0c".into(), source: "local".into(), peer: "-".into(), age_secs: 1.0, lease_secs: Some(59.0) },
            ],
        }];
        let s = fdb_table(&t);
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines[3], "NETWORK  IP            MAC                SOURCE                          AGE");
        assert_eq!(lines[4], "blue     198.51.100.2  02:00:00:00:00:0b  snooped peer 192.0.2.2          3.0s");
        assert_eq!(lines[5], "blue     198.51.100.9  02:00:00:00:00:0c  local (dhcp, lease 59.0s left)  1.0s");
    }

    #[test]
    fn peer_table_shows_state_last_seen_and_traffic_each_way() {
        use crate::metrics::sample::PeerSample;
        let t = vec![PeerTable {
            network: "blue".into(),
            peers: vec![
                PeerSample { peer: "192.0.2.2".into(), rx_packets: 5, rx_bytes: 474, tx_packets: 6, tx_bytes: 500, last_seen_ago_secs: Some(0.25), up: true, speaks_overlayd: true, gets_gso: true, source: "static".into(), ..Default::default() },
                PeerSample { peer: "192.0.2.3".into(), source: "cluster".into(), ..Default::default() },
            ],
        }];
        let s = peer_table(&t);
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines[0], "NETWORK  PEER       SOURCE   STATE  OVERLAYD  GSO  LAST SEEN  RX PACKETS  RX BYTES  TX PACKETS  TX BYTES");
        assert_eq!(lines[1], "blue     192.0.2.2  static   up     yes       yes  0.2s ago   5           474       6           500");
        assert_eq!(lines[2], "blue     192.0.2.3  cluster  down   no        no   never      0           0         0           0");
    }

    #[test]
    fn a_missing_socket_is_one_clear_line() {
        let e = request(Path::new("/nonexistent/overlayd.sock"), &Request::Stats).unwrap_err();
        assert_eq!(e.to_string(), "no overlayd admin socket at /nonexistent/overlayd.sock (is overlayd running? use --admin PATH or --config FILE)");
    }
}
