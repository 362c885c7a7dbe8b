//! Application traffic for the multi-host suite: servers that say which machine answered, and
//! transfers whose bytes are checked end to end by SHA-256.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::thread;

use sha2::{Digest, Sha256};

/// Serves "who am I": each connection first receives `name` and a newline, then is echoed
/// until EOF. Tells a client which endpoint a load-balanced connection reached.
pub fn serve_whoami(listener: TcpListener, name: &'static str) {
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            thread::spawn(move || {
                if stream.write_all(format!("{name}\n").as_bytes()).is_err() {
                    return;
                }
                let mut buf = [0u8; 16 * 1024];
                while let Ok(n @ 1..) = stream.read(&mut buf) {
                    if stream.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
}

/// Reads the first line a [`serve_whoami`] server sends; `None` if the connection closed or
/// failed first.
pub fn whoami(stream: &mut TcpStream) -> Option<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte) {
            Ok(1) if byte[0] == b'\n' => break,
            Ok(1) => line.push(byte[0]),
            _ => return None,
        }
    }
    String::from_utf8(line).ok()
}

/// `len` bytes of a pattern that differs per `seed` (xorshift), so a byte from another
/// connection or a shifted offset changes the hash.
pub fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
        })
        .collect()
}

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Sends `len` bytes (pattern `seed`) through an echo on `stream`, half-closes, reads the
/// echo until EOF and checks its length and SHA-256 against what was sent. The error says
/// what broke: the read error, the short count, or the mismatch.
pub fn echo_transfer(stream: TcpStream, len: usize, seed: u64) -> Result<(), String> {
    let sent = payload(len, seed);
    let want = sha256(&sent);
    let mut writer = stream.try_clone().map_err(|e| format!("clone: {e}"))?;
    // A separate writer: the echo sends back while we still send, and neither side may block
    // the other once the socket buffers are full.
    let write = thread::spawn(move || -> Result<(), String> {
        writer.write_all(&sent).map_err(|e| format!("write: {e}"))?;
        writer
            .shutdown(Shutdown::Write)
            .map_err(|e| format!("half-close: {e}"))
    });
    let mut reader = stream;
    let mut hasher = Sha256::new();
    let mut got = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    let read = loop {
        match reader.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => {
                hasher.update(&buf[..n]);
                got += n;
            }
            Err(e) => break Err(format!("read after {got} of {len} bytes: {e}")),
        }
    };
    let wrote = write
        .join()
        .unwrap_or_else(|_| Err("writer panicked".into()));
    read?;
    wrote?;
    if got != len {
        return Err(format!("EOF after {got} of {len} bytes"));
    }
    if <[u8; 32]>::from(hasher.finalize()) != want {
        return Err(format!("{len} bytes came back, but not the bytes sent"));
    }
    Ok(())
}
