//! The listening socket's kernel side: its receive buffer, and the datagrams the kernel dropped
//! because that buffer was full. With SO_RXQ_OVFL set, Linux attaches to every datagram received the
//! socket's drop counter as it stood when the datagram was queued (socket(7)), so counting drops
//! costs no extra system call.

use std::io::{self, IoSliceMut};
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd};

use nix::sys::socket::{
    self, recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags, SockaddrStorage,
};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Sets SO_RCVBUF (SO_RCVBUFFORCE when permitted, so `net.core.rmem_max` does not cap it) and
/// returns what the kernel reports: twice the request, for its bookkeeping.
pub fn set_receive_buffer(sock: &UdpSocket, bytes: u32) -> io::Result<usize> {
    let want = bytes as usize;
    if setsockopt(sock, sockopt::RcvBufForce, &want).is_err() {
        setsockopt(sock, sockopt::RcvBuf, &want)?;
    }
    receive_buffer(sock)
}

pub fn receive_buffer(sock: &impl AsFd) -> io::Result<usize> {
    Ok(socket::getsockopt(sock, sockopt::RcvBuf)?)
}

/// Asks for the drop counter with every datagram.
pub fn count_drops(sock: &UdpSocket) -> io::Result<()> {
    Ok(setsockopt(sock, sockopt::RxqOvfl, &1)?)
}

/// Room for one SO_RXQ_OVFL control message (a u32), allocated once per socket: a heap buffer is
/// aligned for the `cmsghdr` the kernel writes into it.
pub struct Control(Vec<u8>);

impl Default for Control {
    fn default() -> Self {
        Control(nix::cmsg_space!(u32))
    }
}

/// One datagram without blocking: its length, sender, and the socket's drop counter if attached.
pub fn try_recv(
    sock: &UdpSocket,
    buf: &mut [u8],
    control: &mut Control,
) -> io::Result<(usize, SocketAddr, Option<u32>)> {
    sock.try_io(Interest::READABLE, || {
        let mut iov = [IoSliceMut::new(buf)];
        let msg = recvmsg::<SockaddrStorage>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut control.0[..]),
            MsgFlags::MSG_DONTWAIT,
        )?;
        let from = msg.address.as_ref().and_then(to_std).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, "datagram without a sender")
        })?;
        let drops = msg.cmsgs().ok().and_then(|mut c| {
            c.find_map(|m| match m {
                ControlMessageOwned::RxqOvfl(n) => Some(n),
                _ => None,
            })
        });
        Ok((msg.bytes, from, drops))
    })
}

fn to_std(a: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::V4(SocketAddrV4::from(*v4)));
    }
    a.as_sockaddr_in6()
        .map(|v6| SocketAddr::V6(SocketAddrV6::from(*v6)))
}

/// Turns the kernel's running drop counter into increments: it only grows (wrapping at 2^32).
#[derive(Default)]
pub struct Drops {
    seen: u32,
}

impl Drops {
    /// The drops since the last call, given the counter of a datagram just received.
    pub fn observe(&mut self, counter: u32) -> u32 {
        let d = counter.wrapping_sub(self.seen);
        // Datagrams come out in the order they were queued, so an older counter cannot follow a
        // newer one; a huge step back would be one, and is not counted.
        if d == 0 || d > u32::MAX / 2 {
            return 0;
        }
        self.seen = counter;
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_counter_steps_become_increments_across_the_wrap() {
        let mut d = Drops::default();
        assert_eq!(d.observe(0), 0);
        assert_eq!(d.observe(5), 5);
        assert_eq!(d.observe(5), 0);
        assert_eq!(d.observe(3), 0, "a counter that went back is not counted");
        let mut d = Drops { seen: u32::MAX - 1 };
        assert_eq!(d.observe(2), 4);
    }

    #[tokio::test]
    async fn the_receive_buffer_is_set_and_reported_with_drops_attached() {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let got = set_receive_buffer(&sock, 8192).unwrap();
        assert_eq!(got, 16384, "Linux reports twice the size asked for");
        count_drops(&sock).unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.send_to(b"hello", sock.local_addr().unwrap()).unwrap();
        sock.readable().await.unwrap();
        let mut buf = [0u8; 64];
        let mut control = Control::default();
        let (n, from, drops) = try_recv(&sock, &mut buf, &mut control).unwrap();
        assert_eq!(&buf[..n], b"hello");
        assert_eq!(from, tx.local_addr().unwrap());
        // The counter is attached once there were drops.
        assert!(matches!(drops, None | Some(0)), "{drops:?}");
    }
}
