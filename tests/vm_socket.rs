//! QEMU socket ports end to end, without privileges: a real daemon with a network whose only
//! ports are VM connections on a UNIX socket, and clients speaking QEMU's stream framing
//! (4-byte big-endian length, then the frame) the way `-netdev stream` does.
#![allow(clippy::disallowed_methods, reason = "the test waits for the daemon with wall-clock deadlines")]

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use overlayd::core::DropReason;
use overlayd::daemon::Daemon;

const A: [u8; 6] = [2, 0, 0, 0, 0, 0xa];
const B: [u8; 6] = [2, 0, 0, 0, 0, 0xb];
const BCAST: [u8; 6] = [0xff; 6];

struct Lab {
    dir: PathBuf,
    sock: PathBuf,
    daemon: Option<Daemon>,
}

impl Lab {
    fn new(tag: &str) -> Lab {
        Lab::with(tag, "")
    }

    /// A lab whose network has more config lines (`{dir}` is replaced by the lab's directory).
    fn with(tag: &str, extra: &str) -> Lab {
        let dir = std::env::temp_dir().join(format!("overlayd-vmsock-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let sock = dir.join("blue.sock");
        // a free UDP port for the (unused) underlay socket, so parallel tests do not collide
        let port = std::net::UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).expect("free udp port").port();
        let text = format!(
            "[node]\nunderlay = \"127.0.0.1\"\nunderlay_mtu = 1500\n\
             [[networks]]\nname = \"blue\"\nencap = \"vxlan\"\nvni = 42\nvxlan_port = {port}\n\
             vm_socket = \"{}\"\nvm_socket_mode = \"0600\"\n{}\n",
            sock.display(),
            extra.replace("{dir}", &dir.display().to_string())
        );
        let cfg = overlayd::config::from_str_with_env(&text, Vec::new()).expect("valid config");
        let daemon = Daemon::start(&cfg).expect("daemon starts without privileges");
        Lab { dir, sock, daemon: Some(daemon) }
    }

    fn connect(&self) -> Client {
        let s = UnixStream::connect(&self.sock).expect("connect to the vm socket");
        s.set_read_timeout(Some(Duration::from_millis(200))).expect("timeout");
        Client { s, buf: Vec::new() }
    }

    fn daemon(&self) -> &Daemon {
        self.daemon.as_ref().expect("running")
    }

    fn drops(&self, r: DropReason) -> u64 {
        self.daemon().fabric.load().networks[0].net.stats.snapshot().drop_count(r)
    }

    fn fdb_len(&self) -> usize {
        self.daemon().fabric.load().networks[0].net.fdb.len()
    }

    fn ports(&self) -> usize {
        self.daemon().fabric.load().networks[0].io.ports.load().len()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(d) = self.daemon.take() {
            d.stop();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct Client {
    s: UnixStream,
    buf: Vec<u8>,
}

/// What reading a client gave.
#[derive(Debug, PartialEq)]
enum Got {
    Frame(Vec<u8>),
    Nothing,
    Closed,
}

impl Client {
    fn send(&mut self, frame: &[u8]) {
        let mut m = (frame.len() as u32).to_be_bytes().to_vec();
        m.extend_from_slice(frame);
        self.s.write_all(&m).expect("send");
    }

    fn recv(&mut self, within: Duration) -> Got {
        let deadline = Instant::now() + within;
        loop {
            if self.buf.len() >= 4 {
                let n = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
                if self.buf.len() >= 4 + n {
                    let f = self.buf[4..4 + n].to_vec();
                    self.buf.drain(..4 + n);
                    return Got::Frame(f);
                }
            }
            if Instant::now() >= deadline {
                return Got::Nothing;
            }
            let mut chunk = [0u8; 65536];
            match self.s.read(&mut chunk) {
                Ok(0) => return Got::Closed,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Got::Closed,
                Err(e) => panic!("read: {e}"),
            }
        }
    }
}

fn frame(dst: [u8; 6], src: [u8; 6], payload_len: usize, fill: u8) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload_len);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&0x88b5u16.to_be_bytes());
    f.resize(14 + payload_len, fill);
    f
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

const WAIT: Duration = Duration::from_secs(3);

fn two_clients(lab: &Lab) -> (Client, Client) {
    let (a, b) = (lab.connect(), lab.connect());
    wait_for("both clients are ports", || lab.ports() == 2);
    (a, b)
}

#[test]
fn socket_file_gets_the_configured_mode_and_is_removed_on_stop() {
    let mut lab = Lab::new("mode");
    let mode = std::fs::metadata(&lab.sock).expect("socket file").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    lab.daemon.take().expect("running").stop();
    assert!(!Path::new(&lab.sock).exists(), "socket file left behind");
}

#[test]
fn frames_shorter_than_60_bytes_pass_unpadded_between_two_vms() {
    let lab = Lab::new("short");
    let (mut a, mut b) = two_clients(&lab);
    let arp_sized = frame(BCAST, A, 28, 0x11); // 42 bytes, as an ARP request leaves a guest
    a.send(&arp_sized);
    assert_eq!(b.recv(WAIT), Got::Frame(arp_sized));
    let tiny = frame(A, B, 0, 0); // 14 bytes: just the header
    b.send(&tiny);
    assert_eq!(a.recv(WAIT), Got::Frame(tiny));
    // and the broadcast did not come back to its sender
    assert_eq!(a.recv(Duration::from_millis(100)), Got::Nothing);
}

#[test]
fn a_frame_arriving_in_pieces_is_delivered_once_whole() {
    let lab = Lab::new("partial");
    let (mut a, mut b) = two_clients(&lab);
    let f = frame(BCAST, A, 1400, 0x5a);
    let mut wire = (f.len() as u32).to_be_bytes().to_vec();
    wire.extend_from_slice(&f);
    // the length prefix split after 1 and 3 bytes, the body in uneven parts
    for part in [&wire[..1], &wire[1..3], &wire[3..5], &wire[5..700], &wire[700..]] {
        a.s.write_all(part).expect("write");
        a.s.flush().expect("flush");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(b.recv(WAIT), Got::Frame(f));
    assert_eq!(b.recv(Duration::from_millis(100)), Got::Nothing, "exactly one frame");
}

#[test]
fn a_client_sending_a_bad_length_is_disconnected_and_counted_others_keep_going() {
    let lab = Lab::new("badlen");
    let (mut a, mut b) = two_clients(&lab);
    let mut bad = lab.connect();
    wait_for("the bad client is a port", || lab.ports() == 3);
    bad.s.write_all(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4]).expect("write");
    assert_eq!(bad.recv(WAIT), Got::Closed, "the daemon hangs up on a 4 GiB frame length");
    wait_for("the bad client's port is gone", || lab.ports() == 2);
    assert_eq!(lab.drops(DropReason::BadFraming), 1);

    let mut zero = lab.connect();
    zero.s.write_all(&[0, 0, 0, 0]).expect("write");
    assert_eq!(zero.recv(WAIT), Got::Closed, "a zero length is not a frame either");
    wait_for("counted", || lab.drops(DropReason::BadFraming) == 2);

    let f = frame(BCAST, A, 100, 1);
    a.send(&f);
    assert_eq!(b.recv(WAIT), Got::Frame(f));
}

#[test]
fn known_unicast_goes_to_one_vm_and_a_departed_vms_macs_are_flushed() {
    let lab = Lab::new("flush");
    let (mut a, mut b) = two_clients(&lab);
    let mut c = lab.connect();
    wait_for("three ports", || lab.ports() == 3);
    // B and A introduce themselves; C hears both broadcasts
    b.send(&frame(BCAST, B, 46, 0));
    assert!(matches!(a.recv(WAIT), Got::Frame(_)));
    assert!(matches!(c.recv(WAIT), Got::Frame(_)));
    a.send(&frame(BCAST, A, 46, 0));
    assert!(matches!(b.recv(WAIT), Got::Frame(_)));
    assert!(matches!(c.recv(WAIT), Got::Frame(_)));
    assert_eq!(lab.fdb_len(), 2);

    let u = frame(B, A, 46, 7);
    a.send(&u);
    assert_eq!(b.recv(WAIT), Got::Frame(u));
    assert_eq!(c.recv(Duration::from_millis(200)), Got::Nothing, "known unicast is not flooded");

    let s = lab.daemon().sample();
    assert_eq!((s.networks[0].vm_ports, s.networks[0].vm_connections.connected), (3, 3));
    drop(b);
    wait_for("B's MAC is flushed", || lab.fdb_len() == 1);
    let s = lab.daemon().sample();
    assert_eq!((s.networks[0].vm_ports, s.networks[0].vm_connections.disconnected), (2, 1), "the metrics see B leave");
    // unknown again: flooded to C
    let u = frame(B, A, 46, 8);
    a.send(&u);
    assert_eq!(c.recv(WAIT), Got::Frame(u));
}

#[test]
fn dgram_vms_are_ports_answered_at_their_address_and_dropped_when_gone() {
    use std::os::unix::net::UnixDatagram;
    let lab = Lab::with("dgram", "vm_dgram_socket = \"{dir}/blue-dgram.sock\"");
    let server = lab.dir.join("blue-dgram.sock");
    let mut a = lab.connect();
    wait_for("A is a port", || lab.ports() == 1);
    // a VM the way QEMU -netdev dgram runs it: bound to its own path, sending to the daemon's
    let d_path = lab.dir.join("vm-d.sock");
    let d = UnixDatagram::bind(&d_path).expect("bind the vm side");
    d.set_read_timeout(Some(Duration::from_secs(3))).expect("timeout");
    let hello = frame(BCAST, B, 28, 3);
    d.send_to(&hello, &server).expect("send a datagram");
    assert_eq!(a.recv(WAIT), Got::Frame(hello), "a datagram VM's broadcast reaches a stream VM");
    assert_eq!(lab.ports(), 2);

    let reply = frame(B, A, 100, 4);
    a.send(&reply);
    let mut buf = [0u8; 2048];
    let n = d.recv(&mut buf).expect("the daemon answers at the VM's address");
    assert_eq!(&buf[..n], &reply[..], "one datagram, one whole frame");

    let unnamed = UnixDatagram::unbound().expect("socket");
    unnamed.send_to(&frame(BCAST, [2, 0, 0, 0, 0, 0xc], 46, 0), &server).expect("send");
    wait_for("the unnamed sender is counted", || lab.drops(DropReason::UnnamedSender) == 1);
    assert_eq!(a.recv(Duration::from_millis(100)), Got::Nothing, "and its frame went nowhere");

    // the VM stops: the next frame for it finds nobody, and the port goes within a second
    drop(d);
    a.send(&frame(B, A, 46, 5));
    wait_for("the gone VM's port is removed", || lab.ports() == 1);
    wait_for("its MAC is flushed", || lab.fdb_len() == 1);
}
