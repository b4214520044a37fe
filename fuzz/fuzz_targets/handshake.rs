//! The membership core's handshake, fed what a peer sends on a connection: the input is
//! the byte stream from the peer (length-delimited frames, as on the wire; seeds are
//! captured connections), with the clock moving on 50 ms per frame. The first byte picks
//! the side: an inbound connection, or one this node dialled itself. Whatever comes,
//! the core neither panics nor lets the peer up, since no input can prove the cookie.
#![no_main]

use std::time::{Duration, Instant};

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use rallypoint::Node;
use rallypoint::cookie::Cookie;
use rallypoint::membership::Config;
use rallypoint::membership::core::{Action, Core, TopologyInfo};
use rallypoint::membership::wire;
use rallypoint::strategies::{Peer, PeerSet};
use rallypoint::events::Event;
use tokio_util::codec::{Decoder, LengthDelimitedCodec};

fn check(core: &mut Core) {
    while let Some(a) = core.poll_action() {
        assert!(
            !matches!(a, Action::Emit(Event::NodeUp(_))),
            "a peer came up without knowing the cookie"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&side, stream)) = data.split_first() else {
        return;
    };
    let mut now = Instant::now();
    let local = Node {
        name: "fuzz@10.0.0.1".parse().expect("valid name"),
        addr: "10.0.0.1:45893".parse().expect("valid address"),
        incarnation: 1,
    };
    let topology = TopologyInfo {
        authoritative: side & 2 != 0,
        prune_after: Duration::from_secs(1),
    };
    let mut core = Core::new(
        local,
        Cookie::new("a cookie no input knows"),
        Config::default(),
        vec![topology],
        u64::from(side),
        now,
    );
    let peer: std::net::SocketAddr = "10.0.0.2:45893".parse().expect("valid address");
    let conn = if side & 1 == 0 {
        core.handle_accepted(now, "10.0.0.2:40000".parse().expect("valid address"))
    } else {
        let mut set = PeerSet::new();
        set.insert(Peer::new(peer));
        core.handle_candidates(now, 0, std::sync::Arc::new(set));
        let mut dialled = None;
        while let Some(a) = core.poll_action() {
            if let Action::Connect { conn, .. } = a {
                dialled = Some(conn);
            }
        }
        let Some(conn) = dialled else { return };
        core.handle_connected(now, conn);
        conn
    };
    check(&mut core);
    let mut codec = LengthDelimitedCodec::builder()
        .length_field_length(4)
        .max_frame_length(1 << 20)
        .new_codec();
    let mut buf = BytesMut::from(stream);
    loop {
        match codec.decode(&mut buf) {
            Ok(Some(bytes)) => match wire::decode(&bytes) {
                Ok(frame) => core.handle_frame(now, conn, frame),
                Err(e) => core.handle_decode_error(now, conn, &e),
            },
            Ok(None) | Err(_) => break,
        }
        check(&mut core);
        now += Duration::from_millis(50);
        if let Some(t) = core.poll_timeout()
            && t <= now
        {
            core.handle_timeout(now);
            check(&mut core);
        }
    }
    core.handle_closed(now, conn);
    check(&mut core);
    now += Duration::from_secs(10);
    core.handle_timeout(now);
    check(&mut core);
});
