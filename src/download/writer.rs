//! Appending a download to its `.part` and hashing it, on two threads.
//!
//! SHA-256 is the most expensive step of a download: even with the CPU's SHA
//! instructions it runs at about the speed of a fast link (1.2 GB/s measured
//! here, `cargo bench --bench download`), and on one thread together with the
//! writes it would be the limit. So the writer thread hands each written batch
//! to a hashing thread and goes on writing: the two overlap, and the network
//! task overlaps both. The batches are the network's own buffers (`Bytes`),
//! written with one `writev` each and never copied.
//!
//! What the `.part` holds and what the hasher has seen stay equal: a batch is
//! hashed only once it is written whole, and a failed write cuts the file back to
//! the batches before it. That is what makes resuming (`Range: bytes=len-`) safe.

use std::fs::File;
use std::io::{self, IoSlice, Write};
use std::sync::atomic::Ordering;
use std::sync::mpsc as sync_mpsc;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::fetch::Progress;

/// Bytes collected before one `writev(2)`.
pub const WRITE_CHUNK: usize = 256 * 1024;
/// Written batches waiting for the hasher: the writer runs at most this far ahead.
const HASH_QUEUE: usize = 4;
/// The most buffers in one `writev` (Linux allows 1024).
const MAX_SLICES: usize = 512;

/// What the `.part` holds: its length and the SHA-256 state of exactly those
/// bytes.
pub struct Partial {
    /// ring's SHA-256 (SHA-NI/AVX2 assembly); a portable implementation runs at a
    /// quarter of the speed (300 MB/s measured).
    hasher: ring::digest::Context,
    len: u64,
}

impl Partial {
    /// Nothing yet.
    pub fn new() -> Partial {
        Partial {
            hasher: ring::digest::Context::new(&ring::digest::SHA256),
            len: 0,
        }
    }

    /// Bytes in the `.part` (and in the hasher).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Adds bytes already in the `.part` (read back when resuming after a restart).
    pub fn absorb(&mut self, bytes: &[u8]) {
        self.hasher.update(bytes);
        self.len += bytes.len() as u64;
    }

    /// The SHA-256 of everything absorbed.
    pub fn digest(self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.hasher.finish().as_ref());
        out
    }
}

/// Appends what arrives on `rx` to `file` and hashes it into `partial`, until
/// the channel closes or a write fails (the file is then cut back to what the
/// hasher has seen). Blocking: runs on a blocking thread and starts the hasher's.
pub fn write_all(
    file: &mut File,
    partial: &mut Partial,
    mut rx: mpsc::Receiver<Bytes>,
    progress: &Progress,
) -> io::Result<()> {
    let start = partial.len;
    std::thread::scope(|scope| {
        let (to_hasher, written) = sync_mpsc::sync_channel::<Vec<Bytes>>(HASH_QUEUE);
        let hashing = scope.spawn(move || {
            for batch in written {
                for bytes in &batch {
                    partial.absorb(bytes);
                }
                progress.done.store(partial.len, Ordering::Relaxed);
            }
        });
        let mut len = start;
        let mut batch: Vec<Bytes> = Vec::new();
        let mut batch_len = 0usize;
        let mut result = Ok(());
        loop {
            let next = rx.blocking_recv();
            let end = next.is_none();
            if let Some(bytes) = next {
                batch_len += bytes.len();
                batch.push(bytes);
            }
            let full = batch_len >= WRITE_CHUNK || batch.len() >= MAX_SLICES;
            if (full || end) && !batch.is_empty() {
                if let Err(e) = write_batch(file, &batch) {
                    let _ = file.set_len(len);
                    result = Err(e);
                    break;
                }
                len += batch_len as u64;
                batch_len = 0;
                if to_hasher.send(std::mem::take(&mut batch)).is_err() {
                    break; // the hasher is gone (it panicked); join says so
                }
            }
            if end {
                break;
            }
        }
        drop(to_hasher);
        hashing
            .join()
            .map_err(|_| io::Error::other("the hashing thread panicked"))?;
        result
    })
}

/// Writes every byte of `batch` at the end of `file`, with as few `writev`s as
/// the kernel allows.
fn write_batch(file: &mut File, batch: &[Bytes]) -> io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = batch.iter().map(|b| IoSlice::new(b)).collect();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        match file.write_vectored(rest) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut rest, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn sha256(bytes: &[u8]) -> [u8; 32] {
        let mut p = Partial::new();
        p.absorb(bytes);
        p.digest()
    }

    /// Many small chunks and a few large ones end up in the file in order, and
    /// the digest is the file's.
    #[test]
    fn writes_in_order_and_hashes_what_it_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.part");
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&path)
            .unwrap();
        let mut expected = Vec::new();
        let (tx, rx) = mpsc::channel::<Bytes>(4);
        let feeder = std::thread::spawn(move || {
            let mut sent = Vec::new();
            for i in 0..2000u32 {
                let size = if i % 100 == 0 {
                    300_000
                } else {
                    (i % 700) as usize + 1
                };
                let chunk: Vec<u8> = (0..size).map(|j| (i as usize * 31 + j) as u8).collect();
                sent.extend_from_slice(&chunk);
                tx.blocking_send(Bytes::from(chunk)).unwrap();
            }
            sent
        });
        let mut partial = Partial::new();
        let progress = Progress::default();
        write_all(&mut file, &mut partial, rx, &progress).unwrap();
        expected.extend(feeder.join().unwrap());
        assert_eq!(partial.len(), expected.len() as u64);
        assert_eq!(progress.done.load(Ordering::Relaxed), expected.len() as u64);
        let mut on_disk = Vec::new();
        File::open(&path)
            .unwrap()
            .read_to_end(&mut on_disk)
            .unwrap();
        assert!(on_disk == expected, "file differs from what was sent");
        assert_eq!(partial.digest(), sha256(&expected));
    }

    /// A resumed `.part`: the state rebuilt from its prefix goes on from its length.
    #[test]
    fn continues_the_state_of_a_resumed_part() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("y.part");
        std::fs::write(&path, b"hello ").unwrap();
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        let mut partial = Partial::new();
        partial.absorb(b"hello ");
        let (tx, rx) = mpsc::channel::<Bytes>(1);
        std::thread::spawn(move || tx.blocking_send(Bytes::from_static(b"world")).unwrap());
        write_all(&mut file, &mut partial, rx, &Progress::default()).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"hello world");
        assert_eq!(partial.len(), 11);
        assert_eq!(partial.digest(), sha256(b"hello world"));
    }
}
