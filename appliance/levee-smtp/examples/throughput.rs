//! DATA and BDAT receive throughput of one `Session`, fed in 64 KiB reads.
//! `cargo run --release -p levee-smtp --example throughput`

use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use levee_smtp::{Action, Decision, PeerInfo, Session, SessionConfig};
use levee_types::Reply;

fn drive(s: &mut Session, stored: &mut usize) {
    while let Some(a) = s.poll_action() {
        match a {
            Action::Ask(_) => s.answer(Decision::Accept, Instant::now()),
            Action::Store(m) => {
                *stored += m.data.len();
                s.stored(Reply::with(250, 0, 0, "ok"), Instant::now());
            }
            _ => {}
        }
    }
}

fn run(name: &str, script: &[u8], rounds: usize) {
    let config = SessionConfig { max_message_size: 64 << 20, ..SessionConfig::default() };
    let peer = PeerInfo { ip: IpAddr::V4(Ipv4Addr::LOCALHOST), port: 1 };
    let start = Instant::now();
    let mut stored = 0;
    for _ in 0..rounds {
        let mut s = Session::new(config.clone(), peer, Instant::now());
        drive(&mut s, &mut stored);
        for chunk in script.chunks(64 * 1024) {
            s.handle_input(chunk, Instant::now());
            drive(&mut s, &mut stored);
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let mb = (script.len() * rounds) as f64 / 1e6;
    println!("{name}: {:.0} MB/s ({mb:.0} MB in {secs:.2}s, {stored} bytes stored)", mb / secs);
}

fn main() {
    let line = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.\r\n";
    let mut body = Vec::new();
    while body.len() < 16 << 20 {
        body.extend_from_slice(line);
        body.extend_from_slice(b"..stuffed\r\n");
    }
    let head = b"EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\n";
    let mut data = head.to_vec();
    data.extend_from_slice(b"DATA\r\n");
    data.extend_from_slice(&body);
    data.extend_from_slice(b".\r\nQUIT\r\n");
    run("DATA", &data, 8);
    let mut bdat = head.to_vec();
    bdat.extend_from_slice(format!("BDAT {} LAST\r\n", body.len()).as_bytes());
    bdat.extend_from_slice(&body);
    bdat.extend_from_slice(b"QUIT\r\n");
    run("BDAT", &bdat, 8);
}
